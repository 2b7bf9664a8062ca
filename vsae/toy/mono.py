"""Monosemanticity of a toy model's neurons (Jermyn et al. 2022, section 3).

Because the true features are known, a neuron's selectivity can be read off directly: feed each
feature alone (the feature at 1, the rest 0, through the fixed projection) and record the
neuron's response after the nonlinearity. A neuron is *monosemantic* when its largest response
exceeds ``threshold`` (the seed's 0.999) of the sum of its responses.

Negative responses: GeLU and SoLU (x·eˣ) give small negative outputs to features that switch a
neuron off. They are clipped to 0 before the ratio, i.e. only positive responses count as
responding (the seed's definition, written for ReLU where responses are non-negative). A neuron
with no positive response to any single feature is *dead*, never monosemantic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vsae.toy.model import ToyTask

THRESHOLD = 0.999


def single_feature_responses(model: torch.nn.Module, task: ToyTask) -> np.ndarray:
    """``[k, N]`` float32: neuron j's post-nonlinearity response to feature i alone at 1."""
    with torch.no_grad():
        return model[1](model[0](task.projection)).T.contiguous().numpy()


def monosemantic_mask(responses_kn: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """``[k]`` bool: max positive response > ``threshold`` × the sum of positive responses."""
    pos = np.clip(responses_kn, 0, None)
    total = pos.sum(axis=1)
    return (total > 0) & (pos.max(axis=1) > threshold * total)


@dataclass(frozen=True)
class Monosemanticity:
    """What :func:`measure` counts at one checkpoint."""

    n_monosemantic: int
    """Monosemantic neurons."""
    n_features_covered: int
    """Features that are the preferred feature of at least one monosemantic neuron."""
    n_dead: int
    """Neurons with no positive single-feature response."""
    frac_of_n: float
    """``n_monosemantic / N`` (the seed's 'monosemantic neurons per feature')."""
    frac_of_k: float
    """``n_monosemantic / k``."""
    mean_bias: float
    """Mean hidden bias."""

    def as_row(self) -> dict:
        return dict(self.__dict__)


def measure(model: torch.nn.Module, task: ToyTask, threshold: float = THRESHOLD) -> Monosemanticity:
    """Counts of monosemantic neurons over N and over k, with the mean bias."""
    r = single_feature_responses(model, task)
    mono = monosemantic_mask(r, threshold)
    k, n = r.shape
    return Monosemanticity(int(mono.sum()), int(len(np.unique(r[mono].argmax(axis=1)))) if mono.any() else 0,
                           int((np.clip(r, 0, None).sum(axis=1) == 0).sum()), float(mono.sum() / n),
                           float(mono.sum() / k), float(model[0].bias.detach().mean()))


def sorted_responses(responses_kn: np.ndarray, threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The response matrix with neurons ordered as the seed plots it: monosemantic neurons first,
    grouped by their preferred feature (ascending), strongest first within a feature; then the
    polysemantic ones the same way; dead neurons last. Returns ``(sorted [k, N], order [k])``."""
    pos = np.clip(responses_kn, 0, None)
    mono = monosemantic_mask(responses_kn, threshold)
    dead = pos.sum(axis=1) == 0
    order = np.lexsort((-pos.max(axis=1), pos.argmax(axis=1), ~mono, dead))
    return responses_kn[order], order


__all__ = ["THRESHOLD", "Monosemanticity", "measure", "monosemantic_mask", "single_feature_responses",
           "sorted_responses"]
