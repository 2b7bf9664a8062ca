"""Feature visualisation (seed 001; Olah et al. 2017, "Feature Visualization", Distill): images
optimised to excite one unit of a model — a neuron, a dictionary feature through its encoder, or
a direction — parameterised and regularised the way Lucid does it.

:class:`VisConfig` imports no torch; :func:`render` and the parts it is made of (image
parameterisation in :mod:`vsae.vis.param`, transformation robustness in
:mod:`vsae.vis.transforms`, objectives in :mod:`vsae.vis.objectives`) do, on first use.
"""

from vsae.vis.config import POSITIONS, VisConfig, unit_seed

__all__ = ["POSITIONS", "VisConfig", "Objective", "render", "unit_seed"]

_LAZY = {"render": "vsae.vis.render", "Objective": "vsae.vis.objectives"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vsae.vis' has no attribute {name!r}")
