"""Vision models with hook tables, registered by id (``arch.weights``)."""

from vsae.models import clip_vit, inception_v1  # noqa: F401  (register their model ids)
from vsae.models.hooks import HookInfo, HookPoint, capture, resolve_hooks
from vsae.models.registry import build, model_ids, register
from vsae.models.weights import apply_weights

__all__ = ["HookInfo", "HookPoint", "apply_weights", "build", "capture", "model_ids", "register",
           "resolve_hooks"]
