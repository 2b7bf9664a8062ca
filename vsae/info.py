"""What a store root holds, at a glance (``vsae info STORE``), and a model's hook table (``vsae hooks``).

Everything is read through :class:`~vsae.store.paths.StoreLayout`, read-only; nothing is built or
loaded beyond JSON objects and the model's card.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from vsae.models import card
from vsae.store import ActivationStore
from vsae.store.paths import StoreLayout
from vsae.store.sealed import read_sealed


def store_info(uri: str) -> dict[str, Any]:
    """Hooks, rows, tasks, runs, SAEs, analyses, published and stale state of the store at ``uri``.

    Raises:
        StoreNotFound: there is no store there.
    """
    from vsae.sae.checkpoint import find_saes, read_metrics
    from vsae.store.lease import read_lease
    from vsae.store.store import stale_reason

    import warnings

    from vsae.errors import StaleStoreWarning

    layout = StoreLayout(uri)
    with warnings.catch_warnings():  # the report below says it, with the reason
        warnings.simplefilter("ignore", StaleStoreWarning)
        store = ActivationStore.open(layout.root.uri, committed_only=True)
    spec = store.spec
    committed = len(store.committed_tasks())
    runs = []
    for folder in layout.saes_root.children():
        saes = [{"hook": info.hook, "name": name, "variant": info.sae.variant, "d_sae": info.sae.d_sae(info.d_in),
                 **{k: read_metrics(sae_uri).get(k) for k in ("fvu", "l0", "dead_frac", "step", "done")}}
                for sae_uri, name, info in find_saes(folder)]
        analysis = layout.analysis_index(layout.analysis(folder.name)).read_json_or_none()
        runs.append({"run": folder.name, "saes": saes, "analysed": analysis is not None})
    latest = read_sealed(layout.latest)
    return {
        "uri": layout.root.uri, "model_id": spec.model_id, "weights": spec.weights, "spec_digest": spec.digest,
        "published": store.published, "stale": stale_reason(spec), "n_images": spec.n_images,
        "tasks": {"committed": committed, "total": spec.n_tasks}, "dtype": spec.dtype,
        "hooks": [{"name": h.name, "d_in": h.d_in, "sampler": str(h.sampler), "rows_per_image": h.rows_per_image,
                   "rows": spec.n_images * h.rows_per_image} for h in spec.hooks],
        "runs": runs, "latest": latest["run"] if latest else None,
        "published_runs": [p.name.removesuffix(".json") for p in layout.runs.children() if p.name.endswith(".json")],
        "reports": len([p for p in layout.reports.children() if p.name.endswith(".json")]),
        "reports_uri": layout.reports.uri,
        "lease": read_lease(layout.root.uri),
    }


def format_store_info(info: dict[str, Any]) -> str:
    lines = [f"store          {info['uri']}",
             f"model          {info['model_id']}, weights {info['weights']}"
             + ("  (RANDOM weights, not a pretrained model)" if str(info["weights"]).startswith("random:") else "")]
    if info["stale"]:
        lines.append(f"STALE          {info['stale']}")
    state = "published" if info["published"] else "NOT published"
    lines.append(f"state          {state}: {info['tasks']['committed']}/{info['tasks']['total']} tasks written, "
                 f"{info['n_images']:,} images, {info['dtype']}, spec {info['spec_digest'][:12]}")
    lines.append(f"{'hook':<28} {'d_in':>6} {'sampler':<14} {'rows':>12}")
    for h in info["hooks"]:
        lines.append(f"{h['name']:<28} {h['d_in']:>6} {h['sampler']:<14} {h['rows']:>12,}")
    if not info["runs"]:
        lines.append("runs           none (vsae train names one)")
    for r in info["runs"]:
        flag = "latest, " if r["run"] == info["latest"] else ""
        lines.append(f"run {r['run']}  ({flag}{'analysed' if r['analysed'] else 'not analysed'})")
        for s in r["saes"]:
            fvu = f"{s['fvu']:.4f}" if isinstance(s.get("fvu"), (int, float)) else "-"
            l0 = f"{s['l0']:.1f}" if isinstance(s.get("l0"), (int, float)) else "-"
            lines.append(f"  {s['hook']:<16} {s['name']:<30} d_sae {s['d_sae']:>6}  FVU {fvu:>7}  L0 {l0:>6}"
                         + ("" if s.get("done") else "  (training not finished)"))
    if info["published_runs"]:
        lines.append(f"published runs {', '.join(info['published_runs'])} (latest: {info['latest']})")
    if info["lease"]:
        lines.append(f"lease          held by {info['lease'].get('holder')} on {info['lease'].get('host')}")
    lines.append(f"reports        {info['reports']} under {info['reports_uri']}")
    return "\n".join(lines)


def hook_table(model_id: str, pattern: str = "*") -> str:
    """A model's card and hook table as text (hooks matching the glob ``pattern``)."""
    c = card(model_id)
    lo, hi = c.value_range
    lines = [f"model          {c.model_id} (code version {c.code_version})",
             f"input          {c.input_size}x{c.input_size} RGB, resized with {c.resample}, "
             f"(pixels/255*{c.pixel_scale:g} - mean {tuple(round(m, 4) for m in c.mean)}) / std "
             f"{tuple(round(s, 4) for s in c.std)}, values in [{lo:.3g}, {hi:.3g}]",
             f"source         {c.source}",
             f"{'hook':<34} {'layout':<6} {'shape':<16} {'d_in':>6} {'positions':>9}"]
    shown = [h for h in c.hooks.values() if fnmatch.fnmatchcase(h.name, pattern)]
    for h in shown:
        lines.append(f"{h.name:<34} {h.layout:<6} {str(h.shape):<16} {h.d_in:>6} {h.n_positions:>9}")
    lines.append(f"{len(shown)} of {len(c.hooks)} hooks; extract one with hooks = [\"HOOK=SAMPLER\"], e.g. "
                 f"\"{shown[0].name if shown else next(iter(c.hooks))}=mean\"")
    return "\n".join(lines)


__all__ = ["format_store_info", "hook_table", "store_info"]
