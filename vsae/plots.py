"""Pictures of features: example crops with heat maps, activation histograms, class means.

Researchers would rather look than read, so the client (:class:`vsae.Client`) answers a feature
with images as well as tables: a grid of its examples, each a crop of the unit's receptive field
(:mod:`vsae.models.receptive`) with the unit's activation overlaid as a heat map and its value
written under it (the presentation of Olah et al.'s Circuits dataset examples and of
overcomplete's heat maps), a histogram of its activations over the images, and its largest class
means with their WordNet names. The dashboard (:mod:`vsae.dashboard`) draws its pages from the
same functions, so a page and a notebook show the same picture.

Heat maps are drawn from the rows the store holds: at a hook stored with a spatial sampler only
the sampled positions of an image are known, and the others are left clear (no activation is
invented). Figures are :class:`matplotlib.figure.Figure` objects on the Agg canvas, made without
pyplot, so nothing global changes and they render headless.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vsae.models.receptive import ReceptiveField

if TYPE_CHECKING:
    import pyarrow as pa
    from matplotlib.figure import Figure
    from PIL import Image

    from vsae.client import Client

CMAP = "inferno"
HEAT_ALPHA = 0.6
"""Opacity of the heat map where the unit is at its maximum (scaled down with the value)."""


def overlay_heatmap(image_hwc: np.ndarray, field: ReceptiveField, yx_r2: np.ndarray, values_r: np.ndarray,
                    vmax: float, origin: tuple[int, int] = (0, 0), image_side: int | None = None) -> np.ndarray:
    """``image_hwc`` (uint8 [S, S, 3], or the part of such an image from pixel ``origin`` (y, x)
    on, for an image of side ``image_side``) with each position's value painted over the ``jump`` x
    ``jump`` cell at the centre of its field (matplotlib's ``inferno`` colour map, opacity
    ``HEAT_ALPHA * value / vmax``). Rows with ``y < 0`` (pooled) or a value <= 0 paint nothing.
    Returns a new uint8 [S, S, 3] array."""
    out = image_hwc.astype(np.float32)
    if vmax <= 0 or not np.isfinite(vmax):
        return image_hwc.copy()
    lut = _colour_table()
    h, w = image_hwc.shape[:2]
    scale = (image_side or image_hwc.shape[0]) / field.input_size
    oy, ox = origin
    for (y, x), v in zip(np.asarray(yx_r2).reshape(-1, 2), np.asarray(values_r, dtype=np.float64)):
        if y < 0 or not v > 0:
            continue
        t = min(float(v) / vmax, 1.0)
        y0, y1, x0, x1 = (int(round(c * scale)) for c in field.cell(int(y), int(x)))
        y0, x0, y1, x1 = max(0, y0 - oy), max(0, x0 - ox), min(h, y1 - oy), min(w, x1 - ox)
        if y0 >= y1 or x0 >= x1:
            continue
        a = HEAT_ALPHA * t
        out[y0:y1, x0:x1] = (1 - a) * out[y0:y1, x0:x1] + a * lut[int(round(t * 255))]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@functools.cache
def _colour_table() -> np.ndarray:
    """[256, 3] float32 RGB (0..255) of the colour map at t = i / 255."""
    from matplotlib import colormaps

    return (colormaps[CMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.float32)


def crop_field(image_hwc: np.ndarray, field: ReceptiveField, y: int, x: int, size: int) -> np.ndarray:
    """The part of the image position ``(y, x)`` sees (its receptive field, clipped to the image;
    the whole image for pooled rows), resized to ``size`` x ``size`` (PIL bilinear): uint8 [size, size, 3]."""

    scale = image_hwc.shape[0] / field.input_size
    y0, y1, x0, x1 = (int(round(c * scale)) for c in field.box(int(y), int(x)))
    return _resized(image_hwc[y0:y1, x0:x1], size)


def _resized(pixels_hwc: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    crop = Image.fromarray(np.ascontiguousarray(pixels_hwc))
    return np.asarray(crop.resize((size, size), Image.Resampling.BILINEAR))


def unit_rows(client: Client, image_ids: Sequence[int] | np.ndarray, hook: str, sae: str):
    """The stored rows of the images with the unit's values (:class:`~vsae.store.HookRows`,
    ``acts`` [rows, units] float32): SAE features for ``"run/name"``, the hook's own channels
    for ``"run/neurons"``."""
    from vsae.analysis.results import NEURONS

    if sae.partition("/")[2] == NEURONS:
        return client.activations(image_ids, hook)
    return client.features(image_ids, hook, sae)


def example_crops(client: Client, examples: pa.Table, hook: str, sae: str, feature: int, size: int = 112,
                  source_uri: str | None = None, images: dict[int, np.ndarray | None] | None = None,
                  rows=None, vmax: float | None = None) -> list[np.ndarray | None]:
    """Crops of example rows (``image_id``, ``y``, ``x``, as :meth:`Client.top_examples` gives
    them) sized to the hook's receptive field, with the unit's heat map over the image's stored
    rows (scaled to ``vmax``, by default the feature's maximum): uint8 [size, size, 3] each, None
    where the image could not be read. Already read inputs may be passed: ``images`` (image id ->
    uint8 [S, S, 3] or None), ``rows`` (the unit's :class:`~vsae.store.HookRows` of those images,
    every feature's column)."""
    store, _ = client._hook(hook)
    field = client.receptive_field(hook)
    ids = examples["image_id"].to_numpy()
    if not len(ids):
        return []
    images = dict(images or {})
    missing = sorted({int(i) for i in ids} - set(images))
    if missing:
        pixels, valid = client.images(missing, store.spec.model_id, source_uri)
        images.update({i: (p if ok else None) for i, p, ok in zip(missing, pixels, valid)})
    if rows is None:
        rows = unit_rows(client, np.unique(ids), hook, sae)
    values = np.asarray(rows.acts[:, feature], dtype=np.float32)
    if vmax is None:
        vmax = float(client.feature(feature, hook, sae, n_classes=0).max)
    out: list[np.ndarray | None] = []
    for image_id, y, x in zip(ids, examples["y"].to_numpy(), examples["x"].to_numpy()):
        img = images.get(int(image_id))
        if img is None:
            out.append(None)
            continue
        mine = rows.image_id == image_id
        side = img.shape[0]
        scale = side / field.input_size
        y0, y1, x0, x1 = (int(round(c * scale)) for c in field.box(int(y), int(x)))
        part = overlay_heatmap(img[y0:y1, x0:x1], field, rows.yx[mine], values[mine], vmax, (y0, x0), side)
        out.append(_resized(part, size))
    return out


def grid(crops: Sequence[np.ndarray | None], captions: Sequence[str], cols: int = 5, size: int = 112) -> Image.Image:
    """Crops in rows of ``cols``, each with its caption under it (a grey square for a missing
    image): an RGB PIL image."""
    from PIL import Image, ImageDraw

    n = max(len(crops), 1)
    rows = -(-n // cols)
    pad, text_h = 4, 14
    sheet = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + pad + text_h) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (crop, caption) in enumerate(zip(crops, captions)):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (size + pad), pad + r * (size + pad + text_h)
        tile = Image.fromarray(crop) if crop is not None else Image.new("RGB", (size, size), (200, 200, 200))
        sheet.paste(tile.resize((size, size)), (x0, y0))
        draw.text((x0 + 2, y0 + size + 1), caption, fill="black")
    return sheet


def new_figure(width: float = 4.0, height: float = 2.6) -> Figure:
    """A Figure on the Agg canvas, made without pyplot (no global state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def histogram_figure(interval_counts: Sequence[int], maximum: float, n_zero: int, title: str = "") -> Figure:
    """Images by the unit's max activation: one bar per equal interval of (0, max] (the
    analysis's interval counts, seed 001's intervals), the images where it never fired noted in
    the title. x: activation; y: images."""
    fig = new_figure()
    ax = fig.add_subplot()
    counts = np.asarray(interval_counts, dtype=np.int64)
    if len(counts) and maximum > 0:
        edges = np.linspace(0, maximum, len(counts) + 1)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#4c72b0", edgecolor="white")
    ax.set_xlabel("max activation in the image")
    ax.set_ylabel("images")
    ax.set_title(f"{title}{'; ' if title else ''}{n_zero} images at 0", fontsize=9)
    return fig


def class_means_figure(names: Sequence[str], means: Sequence[float], title: str = "") -> Figure:
    """Horizontal bars of class means, largest on top, labelled with WordNet names."""
    fig = new_figure(4.5, 0.35 + 0.25 * max(len(names), 1))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.asarray(means, dtype=np.float64), color="#dd8452")
    ax.set_yticks(y, [str(n) for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("class mean activation")
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def mono_figure(scores: dict[str, np.ndarray], title: str = "") -> Figure:
    """Mono scores (SPEC 8; lower is more monosemantic) of each unit kind as step histograms on
    shared bins, densities so features and neurons of different counts compare; NaN (never
    fired on a labelled image) left out and counted in the legend."""
    fig = new_figure(5.0, 3.0)
    ax = fig.add_subplot()
    finite = {k: v[np.isfinite(v)] for k, v in scores.items()}
    top = max([float(v.max()) for v in finite.values() if v.size] or [1.0])
    bins = np.linspace(0, top if top > 0 else 1.0, 31)
    for label, v in finite.items():
        if v.size:
            ax.hist(v, bins=bins, density=True, histtype="step", linewidth=1.5,
                    label=f"{label} (n={v.size}, {len(scores[label]) - v.size} unscored)")
    ax.set_xlabel("mono score (0 = one class)")
    ax.set_ylabel("density")
    if title:
        ax.set_title(title, fontsize=9)
    if any(v.size for v in finite.values()):
        ax.legend(fontsize=7)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """A figure as PNG bytes with no time stamp or version in its metadata (same figure, same
    bytes)."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def image_jpeg(pixels_hwc: np.ndarray, quality: int = 88) -> bytes:
    """uint8 [h, w, 3] as baseline JPEG bytes (PIL; no metadata, so the same pixels give the same
    bytes). Photo crops are ~5x smaller than as PNG and encode faster."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels_hwc).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
