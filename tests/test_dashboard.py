"""The dashboard: a static site whose numbers are the client's, the same from S3 as from local
disk, and that a real browser (Debian's headless Chromium) loads without errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

from tests.conftest import BUCKET, ROOT
from vsae import Client
from vsae.dashboard import Section, sections
from vsae.errors import ConfigError, UnknownRun
from vsae.executor import LocalExecutor
from vsae.jobs import dashboard

HOOK, UNIT, RUN = "mixed3b/5x5", "topk-x2-k8", "r1"
SAE = f"{RUN}/{UNIT}"
ARTIFACTS = ROOT / "test-artifacts"


def make_job(store: str, **kw) -> dashboard.DashboardJob:
    return dashboard.DashboardJob(**{"store_uri": store, "run": RUN, "hooks": (HOOK,), "crop_px": 64,
                                     "features_per_block": 64, **kw})


@pytest.fixture(scope="module")
def site(demo_run, tmp_path_factory):
    """The demo store's dashboard of one hook (its SAE and its neurons), on local disk."""
    out = tmp_path_factory.mktemp("site") / "site"
    report = dashboard.run(make_job(demo_run[0], out_uri=str(out)), LocalExecutor(progress=False))
    assert report.ok, report.summary()
    return out, report


@pytest.fixture(scope="module")
def client(demo_run):
    return Client(demo_run[0])


def values(html: str, element_id: str) -> list[float]:
    """The ``data-value`` numbers inside the element with ``id`` (up to its closing table/div)."""
    start = html.index(f'id="{element_id}"')
    end = html.index("</table>" if "<table" in html[start - 30:start] else "</div></div>", start)
    return [float(v) if v not in ("None", "nan") else float("nan")
            for v in re.findall(r'data-value="([^"]*)"', html[start:end])]


def test_site_has_every_page_and_every_link_resolves(site, client):
    out, report = site
    n_feats, n_neurons = client.features_table(HOOK, SAE).num_rows, client.features_table(HOOK, f"{RUN}/neurons").num_rows
    assert report.data["pages"] == n_feats + n_neurons == 192 + 96
    for unit, n in ((UNIT, n_feats), ("neurons", n_neurons)):
        assert len(list((out / f"mixed3b.5x5/{unit}/f").glob("*.html"))) == n
    files = [p for p in out.rglob("*") if p.is_file()]
    images = [p for p in files if p.suffix == ".jpg"]
    assert len(images) == report.data["images"] > 0
    for page in (p for p in files if p.suffix in (".html", ".js")):
        text = page.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), f"{page} fetches from the network"
        for target in re.findall(r'(?:src|href)="([^"#]+)"', text):
            if target.startswith("data:") or "+" in target:  # data URIs; links table.js builds at view time
                continue
            assert (page.parent / target).resolve().is_file(), f"{page.relative_to(out)} links to missing {target}"
    referenced = {(p.parent / t).resolve() for p in files if p.suffix == ".html"
                  for t in re.findall(r'src="([^"]+\.jpg)"', p.read_text())}
    assert referenced == {p.resolve() for p in images}  # every crop is shown, none is orphaned


def test_numbers_on_pages_are_the_clients(site, client):
    out, _ = site
    table = client.features_table(HOOK, SAE)
    fired = np.flatnonzero(table["frac_images"].to_numpy() > 0)
    sample = sorted({int(np.argmax(table["max"].to_numpy())), int(fired[0]), int(fired[-1]), 0})
    for f in sample:
        html = (out / f"mixed3b.5x5/{UNIT}/f/{f}.html").read_text()
        summary = client.feature(f, HOOK, SAE)
        row = table.slice(f, 1).to_pylist()[0]
        expected = [summary.max, summary.mean, summary.frac_images, summary.frac_rows, summary.mono,
                    row["top_class_mean"], 53]
        np.testing.assert_array_equal(values(html, "stats"), expected)  # exactly: float32 widened, repr'd
        assert values(html, "histogram") == list(row["interval_counts"])
        means = client.class_means(f, HOOK, SAE).slice(0, 10)
        if summary.frac_images:
            assert values(html, "class-means") == means["mean"].to_pylist()
            assert all(name in html for name in means["name"].to_pylist())
        top = client.top_examples(f, HOOK, SAE)
        shown = [float(v) for v in re.findall(r'<figcaption data-value="([^"]+)"', html)]
        assert shown[:top.num_rows] == top["activation"].to_pylist()
        assert len(shown) == top.num_rows + client.interval_examples(f, HOOK, SAE).num_rows
        decoder = client.feature_neurons(f, HOOK, SAE)
        assert values(html, "decoder") == decoder["weight"].to_pylist()
        for n in decoder["neuron"].to_pylist():
            assert f'href="../../neurons/f/{n}.html"' in html
    neuron = int(client.feature_neurons(sample[-1], HOOK, SAE)["neuron"][0].as_py())
    html = (out / f"mixed3b.5x5/neurons/f/{neuron}.html").read_text()
    writers = client.neuron(neuron, HOOK, SAE)
    for f in writers["feature"].to_pylist():
        assert f'href="../../{UNIT}/f/{f}.html"' in html
    np.testing.assert_array_equal(values(html, f"writers-{UNIT}")[::2], writers["weight"].to_numpy())


def test_s3_store_gives_the_same_site(demo_run, s3_endpoint, ray_executor, tmp_path):
    """The store copied to the loopback S3 endpoint, pages written by Ray tasks into the store's
    own dashboards folder: byte for byte the site of the store on local disk (the SAE only, to
    keep the S3 writes few)."""
    from vsae.store import io

    out = tmp_path / "site"
    assert dashboard.run(make_job(demo_run[0], out_uri=str(out), neurons=False), LocalExecutor(progress=False)).ok
    fs, _ = io.filesystem(f"s3://{BUCKET}/x")
    prefix = f"{BUCKET}/{uuid.uuid4().hex[:8]}/store.zarr"
    fs.put(demo_run[0], prefix, recursive=True)
    report = dashboard.run(make_job(f"s3://{prefix}", neurons=False), ray_executor)
    assert report.ok and report.data["out_uri"] == f"s3://{prefix}/dashboards/{RUN}"
    local = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    remote = {k[len(f"{prefix}/dashboards/{RUN}/"):]: fs.cat_file(k) for k in fs.find(f"{prefix}/dashboards/{RUN}")}
    assert sorted(remote) == sorted(local) and len(local) > 192
    assert [k for k in local if local[k] != remote[k]] == []


def test_bad_requests_fail_before_work(demo_run, tmp_path):
    with pytest.raises(UnknownRun, match="no complete analysis of run 'nope'"):
        dashboard.check(dashboard.DashboardJob(store_uri=demo_run[0], run="nope"))
    with pytest.raises(UnknownRun, match="hook 'mixed4a' was not analysed"):
        dashboard.check(dashboard.DashboardJob(store_uri=demo_run[0], run=RUN, hooks=("mixed4a",)))
    with pytest.raises(UnknownRun, match="no 'other'"):
        dashboard.check(dashboard.DashboardJob(store_uri=demo_run[0], run=RUN, saes=("other",)))
    with pytest.raises(ConfigError, match="crop_px"):
        dashboard.DashboardJob(store_uri=demo_run[0], crop_px=4)


def test_sections_add_pages_and_panels_where_their_results_exist(demo_run, tmp_path):
    """A registered section shows on the index and on feature pages only when present."""
    def write(client, settings, folder):
        (folder / "index.html").write_bytes(b"<!doctype html><title>x</title>")
        return "index.html"

    section = Section("extra", "Extra results", present=lambda layout, run: run == RUN, write=write,
                      feature_panel=lambda client, settings, hook, unit, f, root: f'<p id="extra">extra {f}</p>')
    sections.register_section(section)
    try:
        with pytest.raises(ValueError, match="already registered"):
            sections.register_section(section)
        out = tmp_path / "site"
        report = dashboard.run(make_job(demo_run[0], out_uri=str(out), neurons=False, features_per_block=256),
                               LocalExecutor(progress=False))
        assert report.data["sections"] == ["Extra results"]
        assert 'href="extra/index.html"' in (out / "index.html").read_text()
        assert '<p id="extra">extra 7</p>' in (out / f"mixed3b.5x5/{UNIT}/f/7.html").read_text()
    finally:
        sections.SECTIONS.pop("extra")


# -- in a real browser ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(site):
    """The site served by ``python -m http.server`` on a free loopback port."""
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(site[0])], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    match = re.search(r"port (\d+)", line)
    if not match:
        proc.kill()
        pytest.fail(f"http.server did not start: {line!r}")
    yield f"http://127.0.0.1:{match.group(1)}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (infra/local/setup.sh --test installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


class Visit:
    """A browser page that records console errors, page errors and failed or non-local requests."""

    def __init__(self, browser, origin: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))
        self.page.on("response", lambda r: r.status >= 400 and self.problems.append(f"HTTP {r.status}: {r.url}"))
        self.page.on("request", lambda r: r.url.startswith((origin, "data:")) or self.problems.append(f"off-site: {r.url}"))

    def open(self, url: str) -> None:
        response = self.page.goto(url, wait_until="load")
        assert response is None or response.ok, url
        self.check()

    def check(self) -> None:
        self.page.wait_for_load_state("load")
        images = self.page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
        assert all(width > 0 for _, width in images), [src for src, width in images if not width]
        assert self.problems == [], self.problems

    def column(self, key: str) -> list[float]:
        index = self.page.eval_on_selector_all("#features th", f"ths => ths.findIndex(t => t.dataset.key === '{key}')")
        cells = self.page.eval_on_selector_all(f"#features tbody tr td:nth-child({index + 1})",
                                               "tds => tds.map(t => t.dataset.value || t.textContent)")
        return [float("nan") if c in ("null", "–") else float(c) for c in cells]


def test_browser_loads_sorts_links_and_shows_the_clients_numbers(browser, served, site, client):
    visit = Visit(browser, served)
    visit.open(f"{served}/index.html")
    assert visit.page.locator("h1").inner_text().startswith("Features of inception_v1.lucid")
    visit.page.click(f"#units-mixed3b\\.5x5 a:text('{UNIT}')")
    visit.check()
    assert visit.page.url.endswith(f"/mixed3b.5x5/{UNIT}/index.html")
    assert visit.page.locator("#features tbody tr").count() == 100  # first page of 192
    # sort by max: descending on the first click, ascending on the second
    visit.page.click("#features th[data-key=max]")
    desc = visit.column("max")
    table = client.features_table(HOOK, SAE)
    assert desc == sorted(table["max"].to_pylist(), reverse=True)[:100]
    visit.page.click("#features th[data-key=max]")
    assert visit.column("max") == sorted(table["max"].to_pylist())[:100]
    # filter by a class name, then page through
    visit.page.select_option("#flags", "live")
    live = int((table["frac_images"].to_numpy() > 0).sum())
    assert visit.page.locator("#features tbody tr").count() == min(live, 100)
    # follow the table's link to the strongest feature, then its decoder's top neuron, and back
    visit.page.click("#features th[data-key=max]")  # descending again
    top = int(np.argmax(table["max"].to_numpy()))
    visit.page.click(f"#features tbody tr:first-child a[href='f/{top}.html']")
    visit.check()
    assert visit.page.locator("h1").inner_text() == f"{HOOK} {UNIT}: feature {top}"
    stats = visit.page.eval_on_selector_all("#stats td[data-value]", "tds => tds.map(t => Number(t.dataset.value))")
    summary = client.feature(top, HOOK, SAE)
    assert stats[:5] == [summary.max, summary.mean, summary.frac_images, summary.frac_rows, summary.mono]
    assert visit.page.locator(".examples img").count() > 0
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-feature.png"
    visit.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")
    neuron = client.feature_neurons(top, HOOK, SAE)["neuron"][0].as_py()
    visit.page.click(f"#decoder a[href='../../neurons/f/{neuron}.html']")
    visit.check()
    assert visit.page.locator("h1").inner_text() == f"{HOOK} neurons: neuron {neuron}"
    visit.page.click("nav.crumbs a:text('index')")
    visit.check()
    assert visit.page.url == f"{served}/index.html"


def test_site_works_from_a_folder(browser, site):
    """Opened as files (file://): the table's data and script load with no server."""
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.goto((site[0] / f"mixed3b.5x5/{UNIT}/index.html").as_uri())
    assert page.locator("#features tbody tr").count() == 100 and errors == []
