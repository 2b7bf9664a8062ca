"""Loading weights from any fsspec URI, recording their sha256, or seeding random weights.

Weights are a state dict saved with ``torch.save`` or as safetensors, or a ``transformers``
checkpoint directory; a model may adapt foreign key names (``adapt_state_dict``). Random initialisation is
only ever explicit (``random:SEED``) and is recorded as such wherever the weights are named.
"""

from __future__ import annotations

import hashlib
import io
import re

import torch
from torch import nn

from vsae.errors import ConfigError
from vsae.store import io as store_io

_RANDOM = re.compile(r"^random:(\d+)$")


def load_state_dict_bytes(blob: bytes, where: str) -> dict[str, torch.Tensor]:
    if blob[:8] and int.from_bytes(blob[:8], "little") < len(blob) and blob[8:9] == b"{":
        from safetensors.torch import load

        return load(blob)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"{where} is neither a safetensors file nor a torch state dict: {err}") from err
    if not isinstance(state, dict):
        raise ConfigError(f"{where} holds a {type(state).__name__}, not a state dict")
    return state


def apply_weights(model: nn.Module, weights: str, model_id: str) -> str:
    """Load ``weights`` (a URI, or ``random:SEED``) into ``model``; return its digest string:
    ``sha256:<hex>`` of the file, or ``random:SEED``."""
    seeded = _RANDOM.match(weights)
    if seeded:
        generator = torch.Generator().manual_seed(int(seeded.group(1)))
        with torch.no_grad():
            for name, param in sorted(model.named_parameters()):
                fan_in = param[0].numel() if param.ndim > 1 else 1
                bound = (1.0 / fan_in) ** 0.5 if param.ndim > 1 else 0.01
                param.copy_(torch.empty_like(param).uniform_(-bound, bound, generator=generator))
        return weights
    try:
        fs, path = store_io.filesystem(store_io.resolve_uri(weights))
        if store_io.with_retries(fs, f"checking {weights}", fs.isdir, path):  # a transformers checkpoint directory
            names = [n for n in ("model.safetensors", "pytorch_model.bin")
                     if store_io.exists(fs, f"{path.rstrip('/')}/{n}")]
            if not names:
                raise FileNotFoundError(f"{weights} holds neither model.safetensors nor pytorch_model.bin")
            path = f"{path.rstrip('/')}/{names[0]}"
        blob = store_io.get_object(fs, path)
    except FileNotFoundError as err:
        raise ConfigError(f"weights for {model_id} not found at {weights}; give a local path or "
                          "URI of the state dict, or random:SEED for random weights") from err
    state = load_state_dict_bytes(blob, weights)
    adapt = getattr(model, "adapt_state_dict", None)
    if adapt is not None:
        state = adapt(state)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"{weights} does not fit {model_id}: missing keys {missing[:5]}"
                          f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                          f"{'...' if len(unexpected) > 5 else ''}")
    for key, value in state.items():
        want = model.state_dict()[key].shape
        if tuple(value.shape) != tuple(want):
            raise ConfigError(f"{weights}: {key} has shape {tuple(value.shape)}, {model_id} needs {tuple(want)}")
    model.load_state_dict(state)
    return "sha256:" + hashlib.sha256(blob).hexdigest()
