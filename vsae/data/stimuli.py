"""Synthetic curve stimuli (seed 001, after Cammarata et al. 2020, "Curve Detectors", section
"Synthetic curves"): arcs of circles at many orientations and radii, with straight lines and
angles as controls, written as an ordinary image dataset so the normal extraction path runs on it.

Why a dataset and not tensors in memory: the tuning job extracts the stimuli with the same model
code, sampler and store as real images (the ``centre`` sampler reads the position the stimuli
are centred on), so a tuning curve and a dataset statistic of the same unit come from one path.

Geometry (pixel centres at integer ``(x, y)``, ``y`` pointing down, angles counter-clockwise as
seen on screen, 0 deg pointing right). A stimulus is centred on ``centre_yx``; its
``orientation`` is the direction, from that point, of the curve's centre of curvature: the curve
bulges away from it and its ends bend towards it. A curve of radius ``r`` is the arc of length
``length`` (capped at 3/4 of the circle) of the circle of radius ``r`` centred at
``centre + r * (cos o, -sin o)``, its midpoint at ``centre``. Radius 0 means curvature 0: the
straight segment of the same length through ``centre``, perpendicular to ``orientation``. An
angle of opening ``a`` has its vertex at ``centre`` and two arms of length ``length / 2`` in the
directions ``orientation + 180 +- (180 - a) / 2``, i.e. pointing away from ``orientation``
like a curve's ends: opening 180 is the straight line. So orientation ``o + 180`` gives the image
rotated by 180 degrees about ``centre``, exactly (a test checks pixels).

Lines are antialiased by area coverage of a stroke of ``width`` pixels (intensity
``clip(width / 2 + 1/2 - distance, 0, 1)``, distance to the ideal curve), drawn in
``foreground`` grey on ``background`` grey (dark on light by default, as Cammarata et al. show
them). Rendering is NumPy only and deterministic: the same config gives the same PNG bytes.

Layout of a stimuli folder (``write_stimuli``)::

    images/stimuli/00000.png ...   the images (an ImageNet-folder dataset: dataset_uri = images/)
    stimuli.parquet                one row per image: file, stimulus, kind, orientation_deg,
                                   radius_px, curvature, opening_deg, width_px, length_px,
                                   centre_y, centre_x (``file`` is the listing's ``shard`` column)
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError
from vsae.store.paths import Location

KINDS = ("curve", "angle")
"""Stimulus kinds: ``curve`` (radius 0 is the straight line) and ``angle``."""
IMAGES, FOLDER, TABLE = "images", "stimuli", "stimuli.parquet"
MAX_ARC_RAD = 1.5 * math.pi
SCHEMA = pa.schema([
    ("file", pa.string()), ("stimulus", pa.int32()), ("kind", pa.string()),
    ("orientation_deg", pa.float64()), ("radius_px", pa.float64()), ("curvature", pa.float64()),
    ("opening_deg", pa.float64()), ("width_px", pa.float64()), ("length_px", pa.float64()),
    ("centre_y", pa.float64()), ("centre_x", pa.float64()),
])


@config_class
class StimuliConfig:
    """Which curve stimuli to draw (Cammarata et al. 2020's synthetic curves and controls)."""

    orientations: int = 64
    """Orientations per radius, evenly spaced over 0..360 degrees (64: 5.625 degree steps)."""
    radii: tuple[float, ...] = (0.0, 8.0, 16.0, 32.0, 64.0)
    """Curve radii in input pixels; 0 is curvature 0, the straight line (the line control)."""
    openings: tuple[float, ...] = (60.0, 90.0, 120.0)
    """Angle controls: opening of each angle in degrees (0 < a < 180); empty for none."""
    width: float = 3.0
    """Stroke width in input pixels."""
    length: float = 48.0
    """Arc length of every curve and line, and the summed arm length of angles, in pixels."""
    size: int = 0
    """Image side in pixels; 0 takes the model's input size from its card."""
    centre_yx: tuple[float, float] | None = None
    """Where stimuli are centred, in pixels (y, x); default the image centre ((size - 1) / 2)."""
    foreground: int = 0
    """Grey level of the stroke, 0..255."""
    background: int = 255
    """Grey level of the blank background, 0..255."""

    def __post_init__(self) -> None:
        if self.orientations < 1:
            raise ConfigError(f"stimuli.orientations must be >= 1, got {self.orientations}")
        if not self.radii or any(r < 0 or not math.isfinite(r) for r in self.radii):
            raise ConfigError(f"stimuli.radii must be finite and >= 0 (0 = straight line), got {self.radii}")
        if any(not 0 < a < 180 for a in self.openings):
            raise ConfigError(f"stimuli.openings must lie strictly between 0 and 180 degrees, got {self.openings}")
        if self.width <= 0 or self.length <= 0:
            raise ConfigError(f"stimuli.width and stimuli.length must be > 0, got {self.width}, {self.length}")
        if self.size < 0:
            raise ConfigError(f"stimuli.size must be >= 0 (0: the model's input size), got {self.size}")
        for name in ("foreground", "background"):
            if not 0 <= getattr(self, name) <= 255:
                raise ConfigError(f"stimuli.{name} must be a grey level 0..255, got {getattr(self, name)}")

    def resolved(self, model_id: str) -> StimuliConfig:
        """This config with ``size`` from the model's card where it is 0."""
        if self.size:
            return self
        from dataclasses import replace

        from vsae.models import card

        return replace(self, size=card(model_id).input_size)

    def centre(self) -> tuple[float, float]:
        assert self.size > 0, "resolve the size first (StimuliConfig.resolved)"
        c = (self.size - 1) / 2
        return tuple(self.centre_yx) if self.centre_yx is not None else (c, c)

    def orientation_grid(self) -> np.ndarray:
        """``[orientations]`` float64 degrees, 0 first."""
        return np.arange(self.orientations, dtype=np.float64) * (360.0 / self.orientations)


def _direction(deg: float) -> tuple[float, float]:
    """(dx, dy) of a screen angle (counter-clockwise, y down); exact at multiples of 90."""
    rad = math.radians(deg % 360.0)
    return math.cos(rad), -math.sin(rad)


def _segment_distance(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


def _arc_distance(px, py, centre, orientation, radius, length):
    ux, uy = _direction(orientation)
    cx, cy = centre[0] + radius * ux, centre[1] + radius * uy  # the circle's centre, (x, y)
    half = min(length / radius, MAX_ARC_RAD) / 2
    vx, vy = px - cx, py - cy
    # angle of each pixel from the arc's midpoint direction (-u), in (-pi, pi]
    phi = np.arctan2(-ux * vy + uy * vx, -ux * vx - uy * vy)
    on_arc = np.abs(phi) <= half
    ends = []
    for s in (-1.0, 1.0):  # the end points: the midpoint direction -u turned by +-half
        c, sn = math.cos(half), s * math.sin(half)
        ex, ey = -ux * c + uy * sn, -ux * sn - uy * c
        ends.append(np.hypot(px - cx - radius * ex, py - cy - radius * ey))
    return np.where(on_arc, np.abs(np.hypot(vx, vy) - radius), np.minimum(*ends))


def render(kind: str, orientation: float, *, size: int, centre_yx: tuple[float, float], radius: float = 0.0,
           opening: float = 180.0, width: float = 3.0, length: float = 48.0) -> np.ndarray:
    """One stimulus as stroke coverage ``[size, size]`` float64 in [0, 1] (1 on the stroke).

    Args:
        kind: ``curve`` (``radius`` 0: a straight line) or ``angle`` (``opening`` in degrees).
        orientation: degrees; see the module docstring for the geometry.
        centre_yx: the stimulus centre in pixels (y, x).

    Raises:
        ConfigError: an unknown kind.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown stimulus kind {kind!r}; valid: {', '.join(KINDS)}")
    py, px = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (float(centre_yx[1]), float(centre_yx[0]))  # (x, y)
    if kind == "curve" and radius > 0:
        dist = _arc_distance(px, py, c, orientation, radius, length)
    elif kind == "curve":
        tx, ty = _direction(orientation + 90.0)
        h = length / 2
        dist = _segment_distance(px, py, (c[0] - h * tx, c[1] - h * ty), (c[0] + h * tx, c[1] + h * ty))
    else:
        arms = []
        for s in (-1.0, 1.0):
            dx, dy = _direction(orientation + 180.0 + s * (180.0 - opening) / 2)
            arms.append(_segment_distance(px, py, c, (c[0] + length / 2 * dx, c[1] + length / 2 * dy)))
        dist = np.minimum(*arms)
    # Rounded to 1e-10, so that sums evaluated in another order (a stimulus and its mirror
    # image) give equal values, and equal 8-bit pixels where coverage is exactly one half.
    return np.round(np.clip(width / 2 + 0.5 - dist, 0.0, 1.0), 10)


def to_pixels(coverage: np.ndarray, foreground: int, background: int) -> np.ndarray:
    """Coverage ``[h, w]`` in [0, 1] -> ``[h, w, 3]`` uint8 RGB grey image (rounded half up)."""
    grey = background + coverage * (foreground - background)
    return np.repeat(np.floor(grey + 0.5).astype(np.uint8)[..., None], 3, axis=2)


def stimulus_table(cfg: StimuliConfig) -> pa.Table:
    """Every stimulus of ``cfg`` (size resolved), in drawing order: curves by radius then
    orientation, then angles by opening then orientation (:data:`SCHEMA`)."""
    assert cfg.size > 0, "resolve the size first (StimuliConfig.resolved)"
    cy, cx = cfg.centre()
    rows = []
    for radius in cfg.radii:
        for o in cfg.orientation_grid():
            rows.append(("curve", o, radius, 1.0 / radius if radius else 0.0, 180.0))
    for opening in cfg.openings:
        for o in cfg.orientation_grid():
            rows.append(("angle", o, 0.0, 0.0, opening))
    n = len(rows)
    cols = list(zip(*rows))
    return pa.Table.from_pydict({
        "file": [f"{FOLDER}/{i:05d}.png" for i in range(n)], "stimulus": list(range(n)), "kind": list(cols[0]),
        "orientation_deg": [float(v) for v in cols[1]], "radius_px": [float(v) for v in cols[2]],
        "curvature": [float(v) for v in cols[3]], "opening_deg": [float(v) for v in cols[4]],
        "width_px": [cfg.width] * n, "length_px": [cfg.length] * n, "centre_y": [float(cy)] * n,
        "centre_x": [float(cx)] * n}, schema=SCHEMA)


def render_row(row: dict, size: int) -> np.ndarray:
    """The coverage image of one :func:`stimulus_table` row."""
    return render(row["kind"], row["orientation_deg"], size=size, centre_yx=(row["centre_y"], row["centre_x"]),
                  radius=row["radius_px"], opening=row["opening_deg"], width=row["width_px"],
                  length=row["length_px"])


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _meta(cfg: StimuliConfig) -> str:
    return json.dumps(to_dict(cfg), sort_keys=True)


def check_stimuli_folder(root_uri: str | Location, cfg: StimuliConfig) -> bool:
    """Whether ``root_uri`` already holds exactly these stimuli (False if it holds none).

    Raises:
        ConfigError: it holds other stimuli (drawing there would mix two sets).
    """
    root = Location.of(root_uri)
    if not (root / TABLE).exists():
        return False
    if (read_stimuli(root / TABLE).schema.metadata or {}).get(b"vsae.stimuli") == _meta(cfg).encode():
        return True
    raise ConfigError(f"{root.uri} already holds other stimuli; draw these into another folder "
                      "(for the tuning job: another run name)")


def write_stimuli(root_uri: str | Location, cfg: StimuliConfig) -> dict[str, str]:
    """Draw every stimulus of ``cfg`` (size resolved) under ``root_uri`` as PNGs plus
    ``stimuli.parquet`` (written last: its presence means complete). A folder that already holds
    the same stimuli is left as it is (idempotent); one holding others raises ConfigError.

    Returns:
        ``{"dataset_uri": images folder (an imagenet_folder dataset), "table_uri": the table}``.
    """
    root = Location.of(root_uri)
    table = stimulus_table(cfg)
    meta = _meta(cfg)
    out = {"dataset_uri": (root / IMAGES).uri, "table_uri": (root / TABLE).uri}
    if check_stimuli_folder(root, cfg):
        return out
    for row in table.to_pylist():
        pixels = to_pixels(render_row(row, cfg.size), cfg.foreground, cfg.background)
        (root / f"{IMAGES}/{row['file']}").write_bytes(_png(pixels))
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({"vsae.stimuli": meta}), buf)
    (root / TABLE).write_bytes(buf.getvalue())
    return out


def read_stimuli(where: str | Location) -> pa.Table:
    """The stimulus table written by :func:`write_stimuli` (:data:`SCHEMA`, with its config in
    the ``vsae.stimuli`` schema metadata). Raises FileNotFoundError."""
    return pq.read_table(io.BytesIO(Location.of(where).read_bytes()))


__all__ = ["KINDS", "SCHEMA", "StimuliConfig", "check_stimuli_folder", "read_stimuli", "render", "stimulus_table", "to_pixels",
           "write_stimuli"]
