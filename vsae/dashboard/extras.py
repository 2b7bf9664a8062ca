"""Dashboard sections for the results of the seed analyses: feature visualisations, tuning
curves, the concept graph and toy-model sweeps.

Each is a :class:`~vsae.dashboard.sections.Section` that looks for its job's results (the run
named by its ``Settings`` field, default the dashboard's run) and adds nothing where they are
absent. Images are copied once into the section's folder by the driver; feature pages link to
them. The feature panels read their job's tables once per process (cached per store and run).

Sources: feature visualisation (Olah et al. 2017) and curve tuning (Cammarata et al. 2020) as
read by seed 001; the concept graph of seed 004 (held-out AUC, ROC curve and F1 per node,
parents per node; ROC curves averaged vertically as in Fawcett 2006, section 8); toy models of superposition (Elhage et al. 2022) for the sweeps.
"""

from __future__ import annotations

import functools
from html import escape
from typing import Any

import numpy as np
import pyarrow as pa

from vsae.dashboard import pages
from vsae.dashboard.sections import Section, register_section
from vsae.store.paths import Location, StoreLayout, hook_folder


TUNING, GRAPH = "tuning", "graph"
"""Section names (their folders under the site root, not under a store)."""


def _unit_shown(settings, hook: str, unit: str) -> bool:
    return any(u.hook == hook and u.unit == unit for u in settings.units)


def _feature_href(root: str, hook: str, unit: str, feature: int) -> str:
    return f"{root}{hook_folder(hook)}/{unit}/f/{feature}.html"


def _png(fig) -> bytes:
    from vsae import plots

    return plots.png_bytes(fig)


# -- feature visualisations (the `visualize` job) ---------------------------------------------
@functools.lru_cache(maxsize=8)
def _vis_rows(store_uri: str, run: str) -> dict[tuple[str, str, int], dict[str, Any]] | None:
    from vsae.analysis import results

    vis = StoreLayout(store_uri).visualisations(run)
    if StoreLayout.visualisation_index(vis).read_json_or_none() is None:
        return None
    table = results.read_table(StoreLayout.visualisation_table(vis))
    return {(r["hook"], r["unit"], int(r["index"])): r for r in table.to_pylist()}


def _vis_present(layout: StoreLayout, run: str) -> bool:
    return StoreLayout.visualisation_index(layout.visualisations(run)).exists()


def _vis_write(client, settings, folder: Location) -> str:
    """Copies the PNG of every shown unit once (``visualize/<hook>/<unit>/<index>.png``) and
    writes an index of activation and ratio to the dataset maximum."""
    rows = _vis_rows(settings.store_uri, settings.visualize_run or settings.run) or {}
    vis = StoreLayout(settings.store_uri).visualisations(settings.visualize_run or settings.run)
    shown = []
    for (hook, unit, index), r in sorted(rows.items()):
        if not _unit_shown(settings, hook, unit):
            continue
        (folder / f"{hook_folder(hook)}/{unit}/{index}.png").write_bytes(
            StoreLayout.visualisation_image(vis, hook, unit, index).read_bytes())
        shown.append({"unit": f"{hook} {unit} {index}", "href": _feature_href("../", hook, unit, index),
                      "activation": r["activation"], "dataset_max": r["dataset_max"], "ratio": r["ratio"]})
    body = ("<h1>Feature visualisations</h1><p class=\"note\">one optimised image per unit (Olah et al. 2017); "
            "activation reached, against the unit's maximum over the dataset</p>"
            + pages.link_table(shown, [("unit", "unit"), ("activation", "activation"),
                                       ("dataset max", "dataset_max"), ("ratio", "ratio")], "visualisations"))
    (folder / "index.html").write_bytes(pages.page("feature visualisations", "../", body,
                                                   [("index", "../index.html")]).encode())
    return "index.html"


def _vis_panel(client, settings, hook: str, unit: str, f: int, root: str) -> str | None:
    rows = _vis_rows(settings.store_uri, settings.visualize_run or settings.run)
    r = rows.get((hook, unit, f)) if rows else None
    if r is None:
        return None
    values = [("activation reached", r["activation"]), ("dataset max", r["dataset_max"]),
              ("ratio to the dataset max", r["ratio"]), ("steps", r["steps"])]
    table = "".join(f"<tr><th>{k}</th>{pages.cell(v)}</tr>" for k, v in values)
    return (f'<h2>Feature visualisation</h2><div class="grid2"><div><img src="{root}visualize/{hook_folder(hook)}/'
            f'{unit}/{f}.png" alt="visualisation of {escape(unit)} {f}" width="160" height="160"></div>'
            f'<div><table class="stats" id="visualisation">{table}</table></div></div>')


# -- tuning curves (the `tuning` job) ---------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _tuning(store_uri: str, run: str, hook: str, unit: str):
    """``(units by unit index, curve responses)`` of one unit set, or None."""
    from vsae.analysis import results

    tuning = StoreLayout(store_uri).tuning(run)
    folder = StoreLayout.tuning_unit(tuning, hook, unit)
    if StoreLayout.tuning_index(tuning).read_json_or_none() is None or not (folder / "units.parquet").exists():
        return None
    units = {int(r["unit"]): r for r in results.read_table(folder / "units.parquet").to_pylist()}
    resp = results.read_table(folder / "responses.parquet")
    return units, resp


def _tuning_present(layout: StoreLayout, run: str) -> bool:
    return StoreLayout.tuning_index(layout.tuning(run)).exists()


def _tuning_write(client, settings, folder: Location) -> str:
    """Copies each shown unit set's heat maps and each hook's radial plot once; an index page."""
    run = settings.tuning_run or settings.run
    tuning = StoreLayout(settings.store_uri).tuning(run)
    body = ["<h1>Tuning curves</h1><p class=\"note\">responses to curve stimuli in SD of the unit's activations "
            "(Cammarata et al. 2020, seed 001 Fig. 2)</p>"]
    for hook in dict.fromkeys(u.hook for u in settings.units):
        polar = StoreLayout.tuning_hook(tuning, hook) / "polar.png"
        if not polar.exists():
            continue
        (folder / f"{hook_folder(hook)}/polar.png").write_bytes(polar.read_bytes())
        body.append(f'<h2>{escape(hook)}</h2><img src="{hook_folder(hook)}/polar.png" alt="radial tuning at '
                    f'{escape(hook)}">')
        for unit in settings.at(hook):
            heat = StoreLayout.tuning_unit(tuning, hook, unit) / "heatmaps.png"
            found = _tuning(settings.store_uri, run, hook, unit)
            if found is None:
                continue
            rows = [{"unit": u, "href": _feature_href("../", hook, unit, u), "orientation": r["preferred_orientation_deg"],
                     "peak": r["peak_sd"]} for u, r in sorted(found[0].items()) if r["curve_like"]]
            body.append(f"<h3>{escape(unit)}: curve-like units</h3>" + pages.link_table(
                rows, [("unit", "unit"), ("preferred orientation (deg)", "orientation"), ("peak (SD)", "peak")],
                f"curves-{hook_folder(hook)}-{unit}"))
            if heat.exists():
                (folder / f"{hook_folder(hook)}/{unit}/heatmaps.png").write_bytes(heat.read_bytes())
                body.append(f'<img src="{hook_folder(hook)}/{unit}/heatmaps.png" alt="heat maps of {escape(unit)}">')
    (folder / "index.html").write_bytes(pages.page("tuning curves", "../", "\n".join(body),
                                                   [("index", "../index.html")]).encode())
    return "index.html"


def _curve_svg(theta: np.ndarray, sd: np.ndarray) -> str:
    """Response (SD) against orientation as an inline SVG polyline (no image to fetch)."""
    lo, hi = min(0.0, float(sd.min())), max(1e-9, float(sd.max()))
    xs = 10 + 280 * (theta - theta.min()) / max(1e-9, float(np.ptp(theta)))
    ys = 110 - 100 * (sd - lo) / (hi - lo)
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    return (f'<svg width="300" height="120" role="img" aria-label="tuning curve"><polyline points="{pts}" '
            f'fill="none" stroke="#1f77b4" stroke-width="2"/></svg>')


def _tuning_panel(client, settings, hook: str, unit: str, f: int, root: str) -> str | None:
    found = _tuning(settings.store_uri, settings.tuning_run or settings.run, hook, unit)
    if found is None or f not in found[0]:
        return None
    r = found[0][f]
    values = [("preferred orientation (deg)", r["preferred_orientation_deg"]),
              ("preferred radius (px)", r["preferred_radius_px"]), ("peak (SD)", r["peak_sd"]),
              ("selectivity", r["selectivity"]), ("curve-like", int(bool(r["curve_like"])))]
    table = "".join(f"<tr><th>{k}</th>{pages.cell(v)}</tr>" for k, v in values)
    resp = found[1]
    mask = ((resp["unit"].to_numpy() == f) & (np.asarray(resp["kind"].to_pylist()) == "curve")
            & (resp["radius_px"].to_numpy() == r["preferred_radius_px"]))
    theta = resp["orientation_deg"].to_numpy()[mask]
    order = np.argsort(theta, kind="stable")
    curve = _curve_svg(theta[order], resp["response_sd"].to_numpy()[mask][order]) if mask.any() else ""
    return (f'<h2>Tuning curve</h2><div class="grid2"><div><table class="stats" id="tuning">{table}</table>'
            f'<p class="note"><a href="{root}{TUNING}/index.html">all tuning curves</a></p></div><div>{curve}'
            f'<p class="note">response in SD against orientation at the preferred radius</p></div></div>')


# -- the concept graph (the `graph` job) ------------------------------------------------------
def graph_unit(dictionary: str) -> str:
    """The dashboard unit of a graph layer's dictionary: ``truth``, or the checkpoint's name."""
    return dictionary if dictionary == "truth" else dictionary.rstrip("/").rsplit("/", 1)[-1]


@functools.lru_cache(maxsize=8)
def _graph(store_uri: str, run: str):
    """``(graph.json, nodes, edges by (role, hook, concept), layers, ROC curves by (hook, concept)
    or None)`` of a complete graph, or None."""
    from vsae.analysis import results

    where = StoreLayout(store_uri).graph(run)
    index = StoreLayout.graph_index(where).read_json_or_none()
    if index is None:
        return None
    nodes, edges, layers = (results.read_table(StoreLayout.graph_table(where, t)) for t in ("nodes", "edges", "layers"))
    roc = None  # a graph written before the ROC curves were stored shows its AUCs only
    if StoreLayout.graph_roc(where).exists():
        roc = {(r["hook"], r["concept"]): r for r in results.read_table(StoreLayout.graph_roc(where)).to_pylist()}
    by: dict[tuple[str, str, int], list[dict[str, Any]]] = {}  # (role, hook, concept) -> edges, read once
    for e in edges.to_pylist():
        by.setdefault(("parents", e["hook"], e["concept"]), []).append(e)
        by.setdefault(("children", e["parent_hook"], e["parent"]), []).append(e)
    return index, nodes, by, layers, roc


def _graph_present(layout: StoreLayout, run: str) -> bool:
    return StoreLayout.graph_index(layout.graph(run)).exists()


def _concept_link(settings, root: str, units: dict[str, str], hook: str, concept: int) -> str | None:
    unit = units.get(hook)
    return _feature_href(root, hook, unit, concept) if unit and _unit_shown(settings, hook, unit) else None


def _graph_write(client, settings, folder: Location) -> str:
    """Per layer pair a page: the summary (AUC, F1 mean/std/median), the held-out ROC curves
    (mean and median over nodes, 10-90% band, chance), the per-node AUC distribution, the parents
    histogram, every node linked to its feature page."""
    index, nodes, _, layers, roc = _graph(settings.store_uri, settings.graph_run or settings.run)
    units = {h: graph_unit(d) for h, d in index["dictionaries"].items()}
    summary_cols = [("layer pair", "name"), ("concepts", "n_concepts"), ("fitted", "n_fitted"),
                    ("AUC mean", "auc_mean"), ("AUC std", "auc_std"), ("AUC median", "auc_median"),
                    ("F1 mean", "f1_mean"), ("F1 std", "f1_std"), ("F1 median", "f1_median"),
                    ("parents mean", "parents_mean"), ("parents max", "parents_max")]
    rows = []
    pair_col = nodes["pair"].to_numpy()
    for layer in layers.to_pylist():
        pair = layer["pair"]
        name = f"{layer['parent_hook']} -> {layer['hook']}"
        rows.append({**layer, "name": name, "href": f"pair-{pair}.html"})
        sel = nodes.filter(pa.array(pair_col == pair)).to_pylist()
        auc = np.asarray([n["auc"] for n in sel if n["auc"] is not None], np.float64)
        curves = [r["tpr"] for r in (roc or {}).values() if r["pair"] == pair]
        fig = pages_figure(3 if roc is not None else 2)
        panel = 1
        if roc is not None:
            _roc_axes(fig.add_subplot(1, 3, 1), curves, len(auc))
            panel = 2
        ax = fig.add_subplot(1, 2 + (roc is not None), panel)
        ax.hist(auc, bins=20, range=(0.0, 1.0), color="#1f77b4")
        ax.set(xlabel="held-out AUC", ylabel="concepts", title="AUC per node")
        ax = fig.add_subplot(1, 2 + (roc is not None), panel + 1)
        hist = layer["parents_hist"] or []
        ax.bar(range(len(hist)), hist, color="#ff7f0e")
        ax.set(xlabel="parents", ylabel="concepts", title="parents per node")
        (folder / f"pair-{pair}.png").write_bytes(_png(fig))
        width = 1200 if roc is not None else 800
        node_rows = [{"concept": n["concept"], "status": n["status"], "parents": n["n_parents"], "auc": n["auc"],
                      "f1": n["f1"], "href": _concept_link(settings, "../", units, n["hook"], n["concept"])}
                     for n in sel]
        body = (f"<h1>Concept graph: {escape(name)}</h1>"
                + pages.link_table([rows[-1]], summary_cols, "layer")
                + (f'<p class="note">held-out ROC curves of the {len(curves)} nodes with an AUC: mean and median '
                   "true-positive rate at each false-positive rate, the 10-90% band over nodes (vertical averaging, "
                   "Fawcett 2006), the chance diagonal; then the per-node AUCs and parents</p>" if roc is not None
                   else '<p class="note">This graph was written without ROC curves (vsae graph --force true stores '
                        "them): the distribution of per-node AUCs is shown instead.</p>")
                + f'<img src="pair-{pair}.png" alt="ROC curves, AUC and parents histograms" width="{width}" '
                  'height="300">'
                + "<h2>Nodes</h2>" + pages.link_table(node_rows, [("concept", "concept"), ("status", "status"),
                                                                 ("parents", "parents"), ("AUC", "auc"), ("F1", "f1")],
                                                      "nodes"))
        (folder / f"pair-{pair}.html").write_bytes(pages.page(f"concept graph {name}", "../", body, [
            ("index", "../index.html"), ("concept graph", "index.html")]).encode())
    body = "<h1>Concept graph</h1>" + pages.link_table(rows, summary_cols, "layers")
    (folder / "index.html").write_bytes(pages.page("concept graph", "../", body, [("index", "../index.html")]).encode())
    return "index.html"


def pages_figure(panels: int = 2):
    from vsae import plots

    return plots.new_figure(4.0 * panels, 3.0)


def _roc_axes(ax, curves: list[list[float]], n_auc: int) -> None:
    """A layer pair's ROC curves on ``ax``: mean and median TPR, the 10-90% band, chance."""
    from vsae.graph.nodes import ROC_FPR
    from vsae.graph.results import roc_band

    ax.plot([0, 1], [0, 1], color="#999999", linestyle="--", linewidth=1, label="chance")
    if curves:
        band = roc_band(np.asarray(curves))
        ax.fill_between(ROC_FPR, band["p10"], band["p90"], color="#1f77b4", alpha=0.25, label="10-90% of nodes")
        ax.plot(ROC_FPR, band["mean"], color="#1f77b4", label="mean")
        ax.plot(ROC_FPR, band["median"], color="#d62728", linestyle=":", label="median")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
           title=f"held-out ROC ({len(curves)} nodes)")
    ax.legend(loc="lower right", fontsize=7)


def _roc_svg(fpr: list[float], tpr: list[float], size: int = 200) -> str:
    """A concept's ROC curve as an inline SVG (no image to fetch): the curve, the chance diagonal,
    axes from 0 to 1; the points are ``data-fpr``/``data-tpr`` as written."""
    pad = 24
    x = [pad + size * f for f in fpr]
    y = [pad + size * (1 - t) for t in tpr]
    pts = " ".join(f"{a:.2f},{b:.2f}" for a, b in zip(x, y))
    end = pad + size
    return (f'<svg id="roc" width="{end + 8}" height="{end + 20}" role="img" aria-label="held-out ROC curve" '
            f'data-fpr="{" ".join(repr(float(f)) for f in fpr)}" data-tpr="{" ".join(repr(float(t)) for t in tpr)}">'
            f'<rect x="{pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>'
            f'<line x1="{pad}" y1="{end}" x2="{end}" y2="{pad}" stroke="#bbb" stroke-dasharray="4 3"/>'
            f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>'
            f'<text x="{pad}" y="{end + 16}" font-size="11">false-positive rate 0 to 1</text>'
            f'<text x="2" y="{pad - 8}" font-size="11">true-positive rate</text></svg>')


def _graph_panel(client, settings, hook: str, unit: str, f: int, root: str) -> str | None:
    found = _graph(settings.store_uri, settings.graph_run or settings.run)
    if found is None:
        return None
    index, nodes, edges, _, roc = found
    units = {h: graph_unit(d) for h, d in index["dictionaries"].items()}
    if units.get(hook) != unit:
        return None
    parts = ["<h2>Concept graph</h2>"]
    node = nodes.filter(pa.array((nodes["hook"].to_numpy(zero_copy_only=False) == hook)
                                  & (nodes["concept"].to_numpy() == f))).to_pylist()
    if node:
        n = node[0]
        parts.append(f'<p class="note">{escape(n["status"])}; <a href="{root}{GRAPH}/pair-{n["pair"]}.html">layer pair '
                     f'{escape(n["parent_hook"])} -&gt; {escape(hook)}</a></p><table class="stats" id="concept">'
                     + "".join(f"<tr><th>{k}</th>{pages.cell(n[v])}</tr>"
                               for k, v in (("held-out AUC", "auc"), ("F1", "f1"), ("parents", "n_parents")))
                     + "</table>")
        curve = (roc or {}).get((hook, f))
        if curve is not None:
            parts.append('<h3>Held-out ROC</h3>' + _roc_svg(curve["fpr"], curve["tpr"])
                         + f'<p class="note">AUC {curve["auc"]:.4f}; chance dashed</p>')
    for title, other_hook, other, table_id in (("Parents", "parent_hook", "parent", "parents"),
                                               ("Children", "hook", "concept", "children")):
        mine = sorted(edges.get((table_id, hook, f), []), key=lambda r: (-r["usage"], -r["weight"]))
        rows = [{"concept": f"{r[other_hook]} {r[other]}", "weight": r["weight"], "usage": r["usage"],
                 "href": _concept_link(settings, root, units, r[other_hook], r[other])} for r in mine]
        parts.append(f"<h3>{title}</h3>" + pages.link_table(rows, [("concept", "concept"), ("weight", "weight"),
                                                                   ("usage", "usage")], table_id))
    return "".join(parts)


# -- toy-model sweeps (the `toy` job) ---------------------------------------------------------
def _toy_present(layout: StoreLayout, toy_uri: str) -> bool:
    return bool(toy_uri) and (Location.of(toy_uri) / "results.parquet").exists()


def _toy_write(client, settings, folder: Location) -> str:
    """The sweep's results table and every plot (copied once) of ``toy_uri``."""
    import pyarrow.parquet as pq

    root = Location.of(settings.toy_uri)
    with (root / "results.parquet").open() as fh:
        table = pq.read_table(fh)
    cols = [c for c in table.column_names if c not in ("__index_level_0__",)]
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body_rows = []
    for r in table.to_pylist():
        body_rows.append("<tr>" + "".join(pages.cell(r[c]) if isinstance(r[c], (int, float)) or r[c] is None
                                          else f"<td>{escape(str(r[c]))}</td>" for c in cols) + "</tr>")
    plots = sorted((p for p in (root / "plots").children() if p.uri.endswith(".png")), key=lambda p: p.uri) if (root / "plots").exists() else []
    imgs = []
    for p in plots:
        name = p.uri.rsplit("/", 1)[-1]
        (folder / f"plots/{name}").write_bytes(p.read_bytes())
        imgs.append(f'<figure><img src="plots/{escape(name)}" alt="{escape(name)}"><figcaption>{escape(name)}'
                    "</figcaption></figure>")
    body = ("<h1>Toy-model sweeps</h1><p class=\"note\">toy models of superposition (Elhage et al. 2022): one row "
            f"per trial and reported step, {table.num_rows} rows</p>" + "".join(imgs)
            + f'<table id="toy"><tr>{head}</tr>{"".join(body_rows)}</table>')
    (folder / "index.html").write_bytes(pages.page("toy-model sweeps", "../", body, [("index", "../index.html")]).encode())
    return "index.html"


register_section(Section("visualize", "Feature visualisations", _vis_present, _vis_write, _vis_panel,
                         run_field="visualize_run"))
register_section(Section(TUNING, "Tuning curves", _tuning_present, _tuning_write, _tuning_panel,
                         run_field="tuning_run"))
register_section(Section(GRAPH, "Concept graph", _graph_present, _graph_write, _graph_panel, run_field="graph_run"))
register_section(Section("toy", "Toy-model sweeps", _toy_present, _toy_write, run_field="toy_uri"))
