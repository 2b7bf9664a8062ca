"""A model's input from uint8 images, as its card describes it (for models without their own)."""

from __future__ import annotations

import numpy as np
import torch

from vsae.models.card import ModelCard


def to_model_input(card: ModelCard, images_bhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[b, s, s, 3]`` to float32 ``[b, 3, s, s]``: ``(pixels / 255 * pixel_scale -
    mean) / std`` per channel (the card's normalisation; timm's ``mean``/``std`` convention)."""
    x = torch.as_tensor(images_bhwc).permute(0, 3, 1, 2).float() * (card.pixel_scale / 255.0)
    mean = torch.tensor(card.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(card.std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - mean) / std


def model_input(model, card: ModelCard, images_bhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The model's input for uint8 RGB images: its own ``preprocess`` if it has one (the built-in
    models do, to follow their reference exactly), else :func:`to_model_input`."""
    preprocess = getattr(model, "preprocess", None)
    return preprocess(images_bhwc) if preprocess is not None else to_model_input(card, images_bhwc)
