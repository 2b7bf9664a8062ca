"""Write the static site: the index, per unit a feature table, per feature a page with crops.

Layout of a site (every link relative, so a folder, ``python -m http.server`` and a bucket
website all serve it)::

    index.html                          hooks, units, sections, mono-score plots
    assets/style.css, assets/table.js   the only style and script (no fonts, no CDN)
    <hook>/mono.png                     mono scores of the hook's SAE features against its neurons
    <hook>/<unit>/index.html            every feature in a sortable, filterable, paginated table
    <hook>/<unit>/features.js           its data (``window.VSAE_FEATURES = {columns, rows}``)
    <hook>/<unit>/f/<feature>.html      a feature's (or neuron's) page
    <hook>/<unit>/f/img/<feature>-<image>.jpg   its example crops, each written once
    <section>/...                       pages of the registered sections present in the store

``<hook>`` is the hook with ``/`` as ``.``; ``<unit>`` an SAE's name or ``neurons``. Feature pages
are written in blocks (:func:`write_block`), one unit of work each, which an executor runs in
parallel; the rest is small and written by the driver. The same store gives the same bytes
wherever it lives: nothing on a page names its location or the time it was made.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from html import escape
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa

from vsae.analysis import results
from vsae.dashboard import pages
from vsae.dashboard.sections import load_sections
from vsae.store.paths import Location, StoreLayout, hook_folder

ASSETS = ("style.css", "table.js")
TOP_CLASSES = 3


@dataclass(frozen=True)
class SiteUnit:
    """One analysed unit the site shows: an SAE (or dictionary) of a hook, or its neurons."""

    hook: str
    unit: str
    n_features: int


@dataclass(frozen=True)
class Settings:
    """What every page writer needs (plain values: it travels to workers)."""

    store_uri: str
    run: str
    out_uri: str
    units: tuple[SiteUnit, ...]
    source_uri: str | None = None
    crop_px: int = 112
    n_classes: int = 10
    dense_frac: float = 0.1
    analysis_digest: str = ""
    """The analysis's ``inputs_digest``: a worker's cached client serves one analysis only."""
    visualize_run: str = ""
    """Run of the ``visualize`` job shown (empty: ``run``)."""
    tuning_run: str = ""
    """Run of the ``tuning`` job shown (empty: ``run``)."""
    graph_run: str = ""
    """Run of the ``graph`` job shown (empty: ``run``)."""
    toy_uri: str = ""
    """An experiment folder of the ``toy`` job (``{experiment_uri}/{name}``); empty: none."""

    def sae(self, unit: str) -> str:
        return f"{self.run}/{unit}"

    def at(self, hook: str) -> list[str]:
        """Units shown at ``hook``, in order."""
        return [u.unit for u in self.units if u.hook == hook]


@dataclass(frozen=True)
class Block:
    """Features ``[start, stop)`` of one unit: one unit of work."""

    hook: str
    unit: str
    start: int
    stop: int


def unit_dir(hook: str, unit: str) -> str:
    """A unit's folder relative to the site root."""
    return f"{hook_folder(hook)}/{unit}"


def feature_href(hook: str, unit: str, feature: int) -> str:
    """A feature page relative to the site root."""
    return f"{unit_dir(hook, unit)}/f/{feature}.html"


@functools.lru_cache(maxsize=4)
def client_for(store_uri: str, analysis_digest: str = ""):
    """One read-only client per store and analysis per process (its table caches serve every
    block; a new analysis of the run gets a new client, never the old tables)."""
    from vsae import Client

    return Client(store_uri)


def plain(value: Any) -> Any:
    """A table value for JSON and pages: NaN as None, float32 as the float it widens to."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# -- the driver's part: assets, indexes, plots ------------------------------------------------
def write_assets(out: Location) -> None:
    for name in ASSETS:
        (out / f"assets/{name}").write_bytes(resources.files("vsae.dashboard").joinpath(f"assets/{name}").read_bytes())


def unit_rows(client, settings: Settings, site_unit: SiteUnit) -> tuple[list[str], list[list[Any]]]:
    """The feature table's columns and rows for ``features.js`` (values as the client answers)."""
    hook, sae = site_unit.hook, settings.sae(site_unit.unit)
    table = client.features_table(hook, sae)
    means = client._table(hook, sae, results.CLASS_MEANS)
    n = table.num_rows
    classes = client._classes(*client._unit(hook, sae)[:2])
    names = classes["name"].to_pylist()
    top_names = [""] * n
    if means.num_rows and len(names):
        freq = np.asarray(means["freq"].combine_chunks().flatten(), dtype=np.float32).reshape(n, len(names))
        order = np.argsort(-freq, axis=1, kind="stable")[:, :TOP_CLASSES]
        top_names = [", ".join(names[c] for c in row if freq[i, c] > 0) for i, row in enumerate(order)]
    cols = {k: table[k].to_pylist() for k in ("feature", "frac_images", "frac_rows", "max", "mean", "mono")}
    columns = ["feature", "frac_images", "frac_rows", "max", "mean", "mono", "classes", "dead", "dense"]
    rows = [[cols["feature"][i], *(plain(cols[k][i]) for k in ("frac_images", "frac_rows", "max", "mean", "mono")),
             top_names[i], int(cols["frac_images"][i] == 0), int(cols["frac_rows"][i] > settings.dense_frac)]
            for i in range(n)]
    return columns, rows


def write_unit_index(client, settings: Settings, site_unit: SiteUnit, out: Location) -> dict[str, Any]:
    """A unit's ``index.html`` and ``features.js``; returns its counts for the site index."""
    columns, rows = unit_rows(client, settings, site_unit)
    folder = out / unit_dir(site_unit.hook, site_unit.unit)
    data = json.dumps({"columns": columns, "rows": rows}, separators=(",", ":"), allow_nan=False)
    (folder / "features.js").write_bytes(f"window.VSAE_FEATURES = {data};\n".encode())
    counts = {"features": len(rows), "dead": sum(r[7] for r in rows), "dense": sum(r[8] for r in rows)}
    scored = [r[5] for r in rows if r[5] is not None]
    counts["mono_median"] = float(np.median(scored)) if scored else None
    kind = "neurons (the baseline)" if site_unit.unit == results.NEURONS else f"SAE {site_unit.unit}"
    summary = (f'<p class="note">{counts["features"]} units, {counts["dead"]} dead (never fired), '
               f'{counts["dense"]} dense (firing on more than {settings.dense_frac:g} of rows). '
               f'Click a column to sort; filter by feature number or class name.</p>')
    title = f"{site_unit.hook}: {kind}"
    html = pages.unit_index(title, "../../", [("index", "../../index.html"), (title, "index.html")],
                            "../mono.png", summary)
    (folder / "index.html").write_bytes(html.encode())
    return counts


def write_mono_plot(client, settings: Settings, hook: str, out: Location) -> None:
    """``<hook>/mono.png``: the mono-score distributions of every unit at the hook."""
    from vsae import plots

    scores = {}
    for unit in settings.at(hook):
        mono = client.features_table(hook, settings.sae(unit))["mono"].to_numpy(zero_copy_only=False)
        scores["neurons" if unit == results.NEURONS else f"{unit} features"] = np.asarray(mono, np.float64)
    fig = plots.mono_figure(scores, f"mono scores at {hook}")
    (out / f"{hook_folder(hook)}/mono.png").write_bytes(plots.png_bytes(fig))


def write_index(client, settings: Settings, counts: dict[tuple[str, str], dict], sections: list[tuple[str, str]],
                out: Location) -> None:
    """The site's ``index.html``: what the store and run are, every hook's units, sections."""
    store = client.store()
    body = [f"<h1>Features of {escape(store.spec.model_id)}, run {escape(settings.run)}</h1>",
            f'<p class="note">{store.spec.n_images} images of {escape(store.spec.dataset)}; '
            f'hooks {", ".join(escape(h) for h in dict.fromkeys(u.hook for u in settings.units))}</p>']
    if str(store.spec.weights).startswith("random:"):
        body.append(f'<p class="warning">The model ran with {escape(store.spec.weights)}: RANDOM weights, '
                    "not a pretrained model.</p>")
    for hook in dict.fromkeys(u.hook for u in settings.units):
        rows = []
        for unit in settings.at(hook):
            c = counts[(hook, unit)]
            rows.append({"unit": unit, "href": f"{unit_dir(hook, unit)}/index.html", "features": c["features"],
                         "dead": c["dead"], "dense": c["dense"], "mono_median": c["mono_median"]})
        body.append(f"<h2>{escape(hook)}</h2>")
        body.append(pages.link_table(rows, [("unit", "unit"), ("features", "features"), ("dead", "dead"),
                                            ("dense", "dense"), ("median mono score", "mono_median")],
                                     f"units-{hook_folder(hook)}"))
        body.append(f'<p><img src="{hook_folder(hook)}/mono.png" alt="mono scores at {escape(hook)}" '
                    f'width="500" height="300"></p>')
    if sections:
        body.append("<h2>More results</h2><ul>" + "".join(f'<li><a href="{escape(href)}">{escape(title)}</a></li>'
                                                          for title, href in sections) + "</ul>")
    (out / "index.html").write_bytes(pages.page(f"vsae features: {settings.run}", "", "\n".join(body)).encode())


def write_sections(client, settings: Settings, out: Location) -> list[tuple[str, str]]:
    """The pages of every registered section present in the store: ``(title, href)`` links."""
    layout = StoreLayout(client.store().uri)
    links = []
    for section in load_sections().values():
        if section.present(layout, section.results_run(settings)):
            entry = section.write(client, settings, out / section.name)
            links.append((section.title, f"{section.name}/{entry}"))
    return links


# -- the workers' part: feature pages ---------------------------------------------------------
def blocks(settings: Settings, per_block: int) -> list[Block]:
    """Every unit's features cut into blocks of ``per_block``."""
    return [Block(u.hook, u.unit, a, min(a + per_block, u.n_features)) for u in settings.units
            for a in range(0, u.n_features, per_block)]


def write_block(block: Block, settings: Settings) -> dict[str, int]:
    """Pages and crops of the block's features (idempotent: a rerun writes the same bytes).
    Returns ``{"pages": ..., "images": ..., "unreadable": ...}``."""
    from vsae import plots

    client = client_for(settings.store_uri, settings.analysis_digest)
    out = Location.of(settings.out_uri)
    hook, unit, sae = block.hook, block.unit, settings.sae(block.unit)
    table = client.features_table(hook, sae).slice(block.start, block.stop - block.start).to_pylist()
    examples = {f: (client.top_examples(f, hook, sae), client.interval_examples(f, hook, sae))
                for f in range(block.start, block.stop)}
    ids = sorted({int(i) for top, iv in examples.values() for t in (top, iv) for i in t["image_id"].to_numpy()})
    store = client._hook(hook)[0]
    model_id = store.spec.model_id
    listed = store.layout.listing.exists()  # a synthetic store has activations but no images to crop
    images: dict[int, np.ndarray | None] = {}
    rows = None
    if ids and listed:
        pixels, valid = client.images(ids, model_id, settings.source_uri)
        images = {i: (p if ok else None) for i, p, ok in zip(ids, pixels, valid)}
        rows = plots.unit_rows(client, ids, hook, sae)
    names = dict(zip(*(client._classes(*client._unit(hook, sae)[:2])[k].to_pylist() for k in ("wnid", "name"))))
    n_images = client._analysed_images(hook, sae)
    tally = {"pages": 0, "images": 0, "unreadable": 0}
    folder = out / f"{unit_dir(hook, unit)}/f"
    for row in table:
        f = row["feature"]
        top, interval = examples[f]
        # an image in both lists has the same crop (the position of its max): drawn once
        both = pa.concat_tables([top.select(["image_id", "y", "x"]), interval.select(["image_id", "y", "x"])])
        _, first = np.unique(both["image_id"].to_numpy(), return_index=True)
        both = both.take(pa.array(np.sort(first)))
        written: dict[int, str | None] = {}
        crops = plots.example_crops(client, both, hook, sae, f, settings.crop_px, settings.source_uri,
                                    images=images, rows=rows, vmax=row["max"]) if listed else []
        for image_id, crop in zip(both["image_id"].to_pylist(), crops):
            if crop is None:
                written[image_id] = None
                tally["unreadable"] += 1
                continue
            name = f"img/{f}-{image_id}.jpg"
            (folder / name).write_bytes(plots.image_jpeg(crop))
            written[image_id] = name
            tally["images"] += 1
        html = feature_page(client, settings, hook, unit, row, top, interval, written, names, n_images,
                            "unreadable" if listed else NO_LISTING)
        (folder / f"{f}.html").write_bytes(html.encode())
        tally["pages"] += 1
    return tally


NO_LISTING = "no image: the store has no dataset listing"
"""Why an example has no crop on a store of activations only (a synthetic or toy store)."""


def _examples(table, written: dict[int, str | None], names: dict[str, str],
              why: str = "unreadable") -> list[dict[str, Any]]:
    return [{"src": written.get(r["image_id"]), "activation": r["activation"], "image_id": r["image_id"],
             "label": names.get(r["wnid"], r["wnid"]) if r["wnid"] else r["caption"], "why": why}
            for r in table.to_pylist()]


def feature_page(client, settings: Settings, hook: str, unit: str, row: dict[str, Any], top, interval,
                 written: dict[int, str | None], names: dict[str, str], n_images: int,
                 why: str = "unreadable") -> str:
    """One feature's (or neuron's) page; ``why`` an example has no crop (:data:`NO_LISTING`)."""
    f, sae, root = row["feature"], settings.sae(unit), "../../../"
    is_neuron = unit == results.NEURONS
    kind = "neuron" if is_neuron else "feature"
    row = {k: plain(v) for k, v in row.items()}
    counts = list(row["interval_counts"])
    body = [f"<h1>{escape(hook)} {escape(unit)}: {kind} {f}</h1>",
            '<p class="note">' + " · ".join(
                x for x in (f'<a href="{f - 1}.html">previous</a>' if f > 0 else "",
                            f'<a href="{f + 1}.html">next</a>' if f + 1 < _n_features(settings, hook, unit) else "",
                            '<a href="../index.html">all of this unit</a>') if x) + "</p>",
            '<div class="grid2"><div><h2>Statistics</h2>',
            pages.stats_table(row, n_images, row["frac_rows"] > settings.dense_frac),
            "<h2>Activation histogram</h2>",
            pages.histogram(counts, row["max"] or 0.0, n_images - sum(counts)),
            "</div><div><h2>Class means</h2>",
            pages.class_bars(client.class_means(f, hook, sae).slice(0, settings.n_classes).to_pylist()),
            "</div></div>",
            f'<h2>Top examples</h2><p class="note">crops of the receptive field ({_field_note(client, hook)}) '
            "around the position where the unit is largest; heat map: its value at the stored positions</p>"
            if why != NO_LISTING else '<h2>Top examples</h2><p class="note">activations only: the store has no '
            "dataset listing, so there are no images to crop</p>",
            pages.example_figures(_examples(top, written, names, why), settings.crop_px),
            "<h2>Examples across activation intervals</h2>"]
    intervals = interval["interval"].to_numpy()
    for i in range(len(counts) - 1, -1, -1):
        part = interval.filter(pa.array(intervals == i))
        body.append(f'<h3>interval {i + 1} of {len(counts)}: {counts[i]} images</h3>')
        body.append(pages.example_figures(_examples(part, written, names, why), settings.crop_px))
    body.append(_decoder(client, settings, hook, unit, f, is_neuron))
    for section in load_sections().values():
        if section.feature_panel is not None:
            panel = section.feature_panel(client, settings, hook, unit, f, root)
            if panel:
                body.append(panel)
    title = f"{hook} {unit} {kind} {f}"
    crumbs = [("index", f"{root}index.html"), (f"{hook} {unit}", "../index.html"), (f"{kind} {f}", f"{f}.html")]
    return pages.page(title, root, "\n".join(body), crumbs)


def _n_features(settings: Settings, hook: str, unit: str) -> int:
    return next(u.n_features for u in settings.units if u.hook == hook and u.unit == unit)


def _field_note(client, hook: str) -> str:
    field = client.receptive_field(hook)
    return "the whole image" if field.whole_image else f"{field.size} px of the {field.input_size} px input"


def _decoder(client, settings: Settings, hook: str, unit: str, f: int, is_neuron: bool) -> str:
    """SAE features: the neurons their decoder direction weighs most. Neurons: the features of
    each SAE at the hook that write to them most. Linked where those pages exist."""
    units = settings.at(hook)
    if not is_neuron:
        table = client.feature_neurons(f, hook, settings.sae(unit)).to_pylist()
        has = results.NEURONS in units
        rows = [{"neuron": r["neuron"], "weight": r["weight"],
                 "href": f"../../{results.NEURONS}/f/{r['neuron']}.html" if has else None} for r in table]
        return ("<h2>Decoder: top neurons</h2>"
                + pages.link_table(rows, [("neuron", "neuron"), ("decoder weight", "weight")], "decoder"))
    parts = ["<h2>Features writing to this neuron</h2>"]
    for other in units:
        if other == results.NEURONS:
            continue
        table = client.neuron(f, hook, settings.sae(other)).to_pylist()
        rows = [{"feature": r["feature"], "weight": r["weight"], "mono": plain(r["mono"]),
                 "top": r["top_class_name"] or "", "href": f"../../{other}/f/{r['feature']}.html"} for r in table]
        parts.append(f"<h3>{escape(other)}</h3>" + pages.link_table(
            rows, [("feature", "feature"), ("decoder weight", "weight"), ("mono", "mono"), ("top class", "top")],
            f"writers-{other}"))
    if len(parts) == 1:
        parts.append('<p class="note">no SAE of this hook is on the dashboard</p>')
    return "".join(parts)
