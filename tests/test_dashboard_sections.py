"""The dashboard's sections for the seed analyses: feature visualisations and tuning curves of
the demo store's units on their feature pages, the concept graph's pages and panels (a layered
synthetic store's graph), and the toy sweeps' page; each absent where its job has not run."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.test_dashboard import ARTIFACTS, HOOK, RUN, SAE, UNIT, Visit, browser, make_job, values  # noqa: F401
from vsae import Client
from vsae.dashboard.sections import load_sections
from vsae.dashboard.site import Settings, SiteUnit
from vsae.executor import LocalExecutor
from vsae.jobs import dashboard
from vsae.resources import Resources
from vsae.store.paths import Location, StoreLayout

LOCAL = LocalExecutor(Resources(executor="local", max_in_flight=2), progress=False)


@pytest.fixture(scope="module")
def sections_site(demo_run, tmp_path_factory):
    """A copy of the demo store with small `visualize` and `tuning` runs of r1 at the SAE's hook,
    a small toy sweep elsewhere, and the dashboard of it all."""
    from vsae.data.stimuli import StimuliConfig
    from vsae.jobs import toy, tuning, visualize
    from vsae.toy import ToyConfig
    from vsae.vis.config import VisConfig

    root = tmp_path_factory.mktemp("sections")
    store = str(root / "store.zarr")
    shutil.copytree(demo_run[0], store)
    vis = visualize.run(visualize.VisualizeJob(store_uri=store, run=RUN, hooks=(HOOK,), indices=(0, 1, 2),
                                               vis=VisConfig(steps=4, size=64, pad=4, jitter=2)), LOCAL)
    assert vis.ok, vis.summary()
    weights = Client(store).store().spec.weights
    tun = tuning.run(tuning.TuningJob(store_uri=store, weights=weights, hooks=(HOOK,), run=RUN, sae_run=RUN, min_sd=0.5,
                                      min_selectivity=0.1,
                                      stimuli=StimuliConfig(orientations=8, radii=(0.0, 16.0), openings=(), width=3.0,
                                                            length=48.0)), LOCAL)
    assert tun.ok, tun.summary()
    sweep = toy.run(toy.ToyJob(experiment_uri=str(root / "toy"), name="s", plots=True,
                               model=ToyConfig(n_features=16, m=6, k=24, eps=1 / 8, steps=32, batch_size=64,
                                               eval_size=256, lr=1e-2), init_bias=[0.0, -0.2]), LOCAL)
    assert sweep.ok, sweep.summary()
    out = root / "site"
    report = dashboard.run(make_job(store, out_uri=str(out), toy_uri=str(root / "toy/s")), LOCAL)
    assert report.ok, report.summary()
    return store, out, report


def test_feature_pages_show_the_visualisation_and_the_tuning_curve(sections_site):
    store, out, report = sections_site
    assert report.data["sections"] == ["Feature visualisations", "Tuning curves", "Toy-model sweeps"]
    index = (out / "index.html").read_text()
    for href in ("visualize/index.html", "tuning/index.html", "toy/index.html"):
        assert f'href="{href}"' in index and (out / href).is_file()
    layout = StoreLayout(store)
    vis = pq.read_table(StoreLayout.visualisation_table(layout.visualisations(RUN)).path).to_pylist()
    tuned = {int(r["unit"]): r for r in pq.read_table(
        (StoreLayout.tuning_unit(layout.tuning(RUN), HOOK, UNIT) / "units.parquet").path).to_pylist()}
    for row in (r for r in vis if r["unit"] in (UNIT, "neurons")):
        f = row["index"]
        html = (out / f"mixed3b.5x5/{row['unit']}/f/{f}.html").read_text()
        expected = [row["activation"], row["dataset_max"], row["ratio"], row["steps"]]
        np.testing.assert_array_equal(values(html, "visualisation"),  # a ratio to a zero maximum: none, shown as "–"
                                      [float("nan") if v is None else v for v in expected])
        img = out / f"visualize/mixed3b.5x5/{row['unit']}/{f}.png"
        assert img.read_bytes() == StoreLayout.visualisation_image(layout.visualisations(RUN), HOOK, row["unit"],
                                                                   f).read_bytes()  # copied once, same bytes
        assert f'src="../../../visualize/mixed3b.5x5/{row["unit"]}/{f}.png"' in html
    assert len(list((out / "visualize").rglob("*.png"))) == 6  # 3 neurons + 3 features, each once
    # a feature outside the visualised indices has no panel
    assert 'id="visualisation"' not in (out / f"mixed3b.5x5/{UNIT}/f/5.html").read_text()
    f = sorted(tuned)[0]
    html = (out / f"mixed3b.5x5/{UNIT}/f/{f}.html").read_text()
    r = tuned[f]
    np.testing.assert_array_equal(values(html, "tuning"), [r["preferred_orientation_deg"], r["preferred_radius_px"], r["peak_sd"],
                                      r["selectivity"], int(r["curve_like"])])
    assert "<polyline" in html and 'href="../../../tuning/index.html"' in html
    assert (out / "tuning/mixed3b.5x5/polar.png").read_bytes()[:4] == b"\x89PNG"
    toy = (out / "toy/index.html").read_text()
    rows = pq.read_table(str(out.parent / "toy/s/results.parquet")).num_rows
    assert toy.count("<tr>") == rows + 1 and len(list((out / "toy/plots").glob("*.png"))) >= 1


def test_sections_are_absent_where_their_jobs_have_not_run(demo_run, tmp_path):
    """The demo store has none of those results: no link, no panel, no folder."""
    out = tmp_path / "site"
    report = dashboard.run(make_job(demo_run[0], out_uri=str(out), neurons=False, features_per_block=256,
                                    toy_uri=str(tmp_path / "no-toy")), LOCAL)
    assert report.ok and report.data["sections"] == []
    assert not any((out / s).exists() for s in ("visualize", "tuning", "graph", "toy"))
    html = (out / f"mixed3b.5x5/{UNIT}/f/0.html").read_text()
    assert not any(f'id="{i}"' in html for i in ("visualisation", "tuning", "concept", "parents"))


def test_concept_graph_pages_and_panels_link_parents_and_children_both_ways(tmp_path, browser):  # noqa: F811
    """A layered synthetic store's graph (true dictionaries, unit ``truth``): a page per layer
    pair with the layer summaries, every node's parents and children on its page, linked."""
    from tests.test_graph import TRUTH_GRAPH, layered_store
    from vsae.jobs import graph

    uri = layered_store(tmp_path, 1200, seed=5, d_in=32, n_features=24, active_per_row=3.0, layers=2)
    rep = graph.run(graph.GraphJob(store_uri=uri, run="g", ensemble=4, mu=10.0, **{**TRUTH_GRAPH, "truth_k": 6}), LOCAL)
    assert rep.ok, rep.summary()
    client = Client(uri)
    hooks = rep.data["hooks"]
    settings = Settings(uri, "r", str(tmp_path / "site"), tuple(SiteUnit(h, "truth", 24) for h in hooks),
                        graph_run="g")
    section = load_sections()["graph"]
    assert section.present(StoreLayout(uri), section.results_run(settings))
    assert not section.present(StoreLayout(uri), "other")
    folder = Location.of(str(tmp_path / "site/graph"))
    assert section.write(client, settings, folder) == "index.html"
    page = (tmp_path / "site/graph/pair-0.html").read_text()
    row = pq.read_table(str(StoreLayout.graph_table(StoreLayout(uri).graph("g"), "layers").path)).to_pylist()[0]
    assert values(page, "layer") == [row[k] for k in ("n_concepts", "n_fitted", "auc_mean", "auc_std", "auc_median",
                                                      "f1_mean", "f1_std", "f1_median", "parents_mean",
                                                      "parents_max")]
    assert "held-out ROC curves of the" in page and "without ROC curves" not in page
    assert (tmp_path / "site/graph/pair-0.png").read_bytes()[:4] == b"\x89PNG"
    child_hook, parent_hook = hooks[1], hooks[0]
    concept = next(c for c in range(24) if client.parents(child_hook, c, "g").num_rows)
    html = section.feature_panel(client, settings, child_hook, "truth", concept, "../../../")
    node = client.concept(child_hook, concept, "g")
    assert values(html, "concept") == [node["auc"], node["f1"], node["n_parents"]]
    svg = html[html.index('<svg id="roc"'):]
    curve = client.concept_roc(child_hook, concept, "g")
    assert [float(v) for v in re.search(r'data-tpr="([^"]*)"', svg).group(1).split()] == curve["tpr"].to_pylist()
    parents = client.parents(child_hook, concept, "g")
    for p in parents["parent"].to_pylist():
        assert f'href="../../../{parent_hook.replace("/", ".")}/truth/f/{p}.html"' in html
        # ... and back: the parent's panel lists this concept among its children
        back = section.feature_panel(client, settings, parent_hook, "truth", p, "../../../")
        children = back[back.index('id="children"'):]
        assert f'href="../../../{child_hook.replace("/", ".")}/truth/f/{concept}.html"' in children
        assert client.children(parent_hook, p, "g").num_rows == len(re.findall("<tr>", children)) - 1
    assert section.feature_panel(client, settings, child_hook, "other-unit", concept, "") is None
    # the pair's page in Chromium, opened as a file: no errors, its plot decoded
    from vsae.dashboard.site import write_assets

    write_assets(Location.of(str(tmp_path / "site")))
    visit = Visit(browser, "file://")
    visit.open((tmp_path / "site/graph/pair-0.html").as_uri())
    assert visit.page.locator("img").count() == 1 and visit.page.locator("#nodes tr").count() == 25


def test_browser_loads_a_feature_page_with_panels_and_the_section_pages(browser, sections_site):  # noqa: F811
    import subprocess
    import sys

    _, out, _ = sections_site
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", proc.stdout.readline()).group(1)
        origin = f"http://127.0.0.1:{port}"
        visit = Visit(browser, origin)
        visit.open(f"{origin}/mixed3b.5x5/{UNIT}/f/0.html")
        assert visit.page.locator("#visualisation").count() == 1
        assert visit.page.locator("h2:text('Feature visualisation') + div img").count() == 1
        for page in ("tuning/index.html", "toy/index.html", "visualize/index.html"):
            visit.open(f"{origin}/{page}")
        visit.page.click("#visualisations a >> nth=0")
        visit.check()
        assert "/f/" in visit.page.url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# -- the concept graph through the real entrypoints --------------------------------------------
GRAPH_RUN = "e2e"


def cli(tmp_path, job: str, toml: str, *args: str) -> None:
    """``vsae <job> --config <toml> ...`` in process, on the local executor."""
    from cluster.cli import main

    config = tmp_path / f"{job}.toml"
    config.write_text(toml)
    assert main([job, "--config", str(config), "--resources.executor", "local", *args]) == 0, job


@pytest.fixture(scope="module")
def graph_site(tmp_path_factory):
    """``vsae synthetic`` (a layered store, two layers of 16 concepts), ``vsae train`` (a K-SVD
    dictionary per hook), ``vsae analyze``, ``vsae graph`` and ``vsae dashboard``: the site and its store."""
    root = tmp_path_factory.mktemp("graph-e2e")
    store = str(root / "layered.zarr")
    cli(root, "synthetic", f'store_uri = "{store}"\nimages_per_task = 600\n[data]\nn_rows = 600\nd_in = 24\n'
        "n_features = 16\nactive_per_row = 3.0\nnoise = 0.01\nseed = 3\nlayers = 2\nmax_parents = 3\n")
    saes = "".join(f'[[saes]]\nhook = "layer{i}"\n[saes.sae]\nvariant = "ksvd"\nexpansion = 1\nk = 3\n'
                   "ksvd_iterations = 4\nksvd_rows = 600\n" for i in range(2))
    cli(root, "train", f'store_uri = "{store}"\nrun = "{GRAPH_RUN}"\n[train]\nbatch_rows = 200\neval_rows = 100\n'
        f"normaliser_rows = 400\n{saes}")
    cli(root, "analyze", f'store_uri = "{store}"\nrun = "{GRAPH_RUN}"\n[analysis]\ntop_k = 2\nper_interval = 1\nclasses = false\n')
    cli(root, "graph", f'store_uri = "{store}"\nrun = "{GRAPH_RUN}"\nsaes_run = "{GRAPH_RUN}"\nensemble = 4\n'
        "threshold = 0.05\n")
    out = root / "site"
    cli(root, "dashboard", f'store_uri = "{store}"\nrun = "{GRAPH_RUN}"\nout_uri = "{out}"\ncrop_px = 32\n'
        "features_per_block = 32\n")
    return store, out


def test_graph_pages_from_the_cli_load_in_chromium_and_show_the_clients_numbers(graph_site, browser):  # noqa: F811
    """The graph's pair page and a concept's page, served over HTTP: no console errors, no failed
    requests, every image decoded, the ROC plot and curve present, parents and children links
    resolving to the linked concepts' pages, and the numbers the client's."""
    import subprocess
    import sys

    from vsae.dashboard.extras import graph_unit

    store, out = graph_site
    client = Client(store)
    index = (out / "index.html").read_text()
    assert 'href="graph/index.html"' in index
    layer = client.graph_layers(GRAPH_RUN).to_pylist()[0]
    hook, parent_hook = layer["hook"], layer["parent_hook"]
    unit = graph_unit(StoreLayout(store).graph_index(StoreLayout(store).graph(GRAPH_RUN)).read_json()
                      ["dictionaries"][hook])
    curves = client.roc_curves(hook, GRAPH_RUN)
    assert curves.num_rows > 0
    # a sample of concepts with parents: the page's numbers and curve are the client's
    with_parents = [c for c in curves["concept"].to_pylist() if client.parents(hook, c, GRAPH_RUN).num_rows]
    assert with_parents
    for concept in with_parents[:3]:
        html = (out / f"{hook}/{unit}/f/{concept}.html").read_text()
        node = client.concept(hook, concept, GRAPH_RUN)
        assert values(html, "concept") == [node["auc"], node["f1"], node["n_parents"]]
        tpr = [float(v) for v in re.search(r'<svg id="roc"[^>]*data-tpr="([^"]*)"', html).group(1).split()]
        assert tpr == client.concept_roc(hook, concept, GRAPH_RUN)["tpr"].to_pylist()
    pair = (out / "graph/pair-0.html").read_text()
    assert values(pair, "layer")[:3] == [layer["n_concepts"], layer["n_fitted"], layer["auc_mean"]]
    rows = np.asarray(values(pair, "nodes")).reshape(-1, 3)  # parents, AUC, F1 of every node, by concept
    for concept in with_parents[:3]:
        node = client.concept(hook, concept, GRAPH_RUN)
        assert rows[concept].tolist() == [node["n_parents"], node["auc"], node["f1"]]
    proc = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1",
                             "--directory", str(out)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = re.search(r"port (\d+)", proc.stdout.readline()).group(1)
        origin = f"http://127.0.0.1:{port}"
        visit = Visit(browser, origin)
        visit.open(f"{origin}/index.html")
        visit.page.click("a[href='graph/index.html']")
        visit.check()
        visit.page.click("#layers a >> nth=0")
        visit.check()
        assert visit.page.url.endswith("/graph/pair-0.html")
        assert visit.page.locator("img[alt^='ROC curves']").evaluate("e => e.naturalWidth") > 0
        concept = with_parents[0]
        visit.page.click(f"#nodes a[href$='/{unit}/f/{concept}.html']")
        visit.check()
        assert visit.page.url.endswith(f"/{hook}/{unit}/f/{concept}.html")
        assert visit.page.locator("svg#roc polyline").count() == 1
        parent = client.parents(hook, concept, GRAPH_RUN)["parent"][0].as_py()
        parent_unit = graph_unit(StoreLayout(store).graph_index(StoreLayout(store).graph(GRAPH_RUN)).read_json()
                                 ["dictionaries"][parent_hook])
        visit.page.click(f"#parents a[href$='/{parent_unit}/f/{parent}.html']")
        visit.check()
        assert visit.page.url.endswith(f"/{parent_hook}/{parent_unit}/f/{parent}.html")
        visit.page.click(f"#children a[href$='/{unit}/f/{concept}.html']")  # ... and back to the child
        visit.check()
        assert visit.page.url.endswith(f"/{hook}/{unit}/f/{concept}.html")
        ARTIFACTS.mkdir(exist_ok=True)
        visit.page.goto(f"{origin}/graph/pair-0.html")
        visit.page.screenshot(path=str(ARTIFACTS / "dashboard-graph-pair.png"), full_page=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_s3_stores_give_the_same_sections(sections_site, graph_site, s3_endpoint, ray_executor, tmp_path):
    """Both stores with section results (visualisations, tuning curves and a toy sweep; a concept
    graph with its ROC curves) and the toy sweep copied to the loopback S3 endpoint: their sites,
    written into the stores' own dashboards folders (by Ray tasks for the first), are byte for byte
    the sites of the same stores on local disk (the first without its neurons' pages, whose crops
    would make thousands of S3 writes)."""
    import uuid

    from tests.conftest import BUCKET
    from vsae.store import io

    fs, _ = io.filesystem(f"s3://{BUCKET}/x")
    prefix = f"{BUCKET}/{uuid.uuid4().hex[:8]}"

    def same(local_site, remote_site: str) -> list[str]:
        local = {str(p.relative_to(local_site)): p.read_bytes() for p in local_site.rglob("*") if p.is_file()}
        remote = {k[len(remote_site) + 1:]: fs.cat_file(k) for k in fs.find(remote_site)}
        assert sorted(remote) == sorted(local)
        assert [k for k in local if local[k] != remote[k]] == []
        return sorted(local)

    store, site, _ = sections_site
    out = tmp_path / "site"
    assert dashboard.run(make_job(store, out_uri=str(out), neurons=False, toy_uri=str(site.parent / "toy/s")), LOCAL).ok
    fs.put(store, f"{prefix}/store.zarr", recursive=True)
    fs.put(str(site.parent / "toy/s"), f"{prefix}/toy/s", recursive=True)
    report = dashboard.run(make_job(f"s3://{prefix}/store.zarr", neurons=False, toy_uri=f"s3://{prefix}/toy/s"),
                           ray_executor)
    assert report.ok, report.summary()
    assert report.data["sections"] == ["Feature visualisations", "Tuning curves", "Toy-model sweeps"]
    files = same(out, f"{prefix}/store.zarr/dashboards/{RUN}")
    assert {"visualize/index.html", "tuning/index.html", "toy/index.html"} <= set(files)

    store, out = graph_site
    fs.put(store, f"{prefix}/layered.zarr", recursive=True)
    report = dashboard.run(dashboard.DashboardJob(store_uri=f"s3://{prefix}/layered.zarr", run=GRAPH_RUN, crop_px=32,
                                                  features_per_block=32), LOCAL)
    assert report.ok and report.data["sections"] == ["Concept graph"], report.summary()
    files = same(out, f"{prefix}/layered.zarr/dashboards/{GRAPH_RUN}")
    assert {"graph/index.html", "graph/pair-0.html", "graph/pair-0.png"} <= set(files)
