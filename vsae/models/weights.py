"""Loading weights from any fsspec URI, recording their sha256, or seeding random weights.

Weights are a state dict saved with ``torch.save`` or as safetensors, or a ``transformers``
checkpoint directory; a model may adapt foreign key names (``adapt_state_dict``). Random initialisation is
only ever explicit (``random:SEED``) and is recorded as such wherever the weights are named.
"""

from __future__ import annotations

import hashlib
import io
import re
from typing import TYPE_CHECKING

from vsae.errors import ConfigError, StorageUnavailable
from vsae.store import io as store_io

if TYPE_CHECKING:
    import torch
    from torch import nn

_RANDOM = re.compile(r"random:(\d+)")
FORMATS = ("a .safetensors file, a state dict saved with torch.save (tensors only: pickles are read with "
           "weights_only=True and never run code), or a transformers checkpoint folder "
           "(model.safetensors or pytorch_model.bin), or random:SEED")
"""What a ``weights`` value may name, for error messages."""


def random_seed(weights: str) -> int | None:
    """The seed of ``random:SEED`` weights (a non-negative integer), or None for a URI.

    Raises:
        ConfigError: ``random:`` followed by anything but an integer.
    """
    if not weights.startswith("random:"):
        return None
    seeded = _RANDOM.fullmatch(weights)
    if not seeded:
        raise ConfigError(f"weights {weights!r}: random weights are random:SEED with an integer seed, "
                          "e.g. random:0")
    return int(seeded.group(1))


def load_state_dict_bytes(blob: bytes, where: str) -> dict[str, torch.Tensor]:
    """A state dict from a file's bytes: safetensors (an 8-byte little-endian header length, then
    a JSON header) or ``torch.save`` output, read with ``weights_only=True``.

    Raises:
        ConfigError: naming ``where`` and the valid formats, for bytes that are neither (a
        damaged or fake safetensors header, garbage, a pickle of anything but tensors).
    """
    import torch

    if len(blob) > 8 and int.from_bytes(blob[:8], "little") < len(blob) and blob[8:9] == b"{":
        from safetensors.torch import load

        try:
            return load(blob)
        except Exception as err:  # noqa: BLE001 - SafetensorError and friends: say what was read
            raise ConfigError(f"weights {where}: a damaged safetensors file ({_reason(err)}); valid: {FORMATS}") from None
    if not blob:
        raise ConfigError(f"weights {where}: the file is empty; valid: {FORMATS}")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a state dict"
        raise ConfigError(f"weights {where}: neither a safetensors file nor a torch state dict "
                          f"({_reason(err)}); valid: {FORMATS}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"weights {where} holds a {type(state).__name__}, not a state dict; valid: {FORMATS}")
    return state


def _reason(err: BaseException) -> str:
    """The library's own reason, without its advice: torch's weights-only errors suggest
    re-running with ``weights_only=False`` (which runs the file's code), never repeated here."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = re.split(r"\n\s*\n|Please use|Check the documentation", text.strip(), maxsplit=1)[0]
    sentences = re.split(r"(?<=\.)\s+", " ".join(text.split()))
    text = " ".join(s for s in sentences if "weights_only" not in s).rstrip(".")
    return f"{type(err).__name__}: {text[:200]}" if text else type(err).__name__


def apply_weights(model: nn.Module, weights: str, model_id: str) -> str:
    """Load ``weights`` (a URI, or ``random:SEED``) into ``model``; return its digest string:
    ``sha256:<hex>`` of the file, or ``random:SEED``."""
    import torch

    seed = random_seed(weights)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
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
    except FileNotFoundError:
        raise ConfigError(f"weights for {model_id} not found at {weights}; give a local path or "
                          "URI of the state dict, or random:SEED for random weights") from None
    except StorageUnavailable:
        raise  # the endpoint, not the file: the unit is retried
    except Exception as err:  # noqa: BLE001 - an unreachable host, a refused request: say which file
        raise ConfigError(f"weights for {model_id} cannot be read from {weights}: {_reason(err)}") from None
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
