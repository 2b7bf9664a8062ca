"""What an analysis pass works on: the units at a hook, the hook's plan, the classes (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vsae.analysis.config import AnalysisConfig


@dataclass(frozen=True)
class Unit:
    """What is analysed at a hook: ``neurons`` (the channels) or one SAE (``sae_uri``)."""

    name: str
    sae_uri: str = ""
    weights_digest: str = ""
    """sha256 of the SAE's weights: workers cache loaded SAEs by it, so a retrained SAE at the
    same URI is loaded again."""


@dataclass(frozen=True)
class HookPlan:
    """Everything a task needs to analyse its images at one hook."""

    store_uri: str
    hook: str
    units: tuple[Unit, ...]
    n_positions: int
    """Positions per image (the ``n`` of the inverse-probability mean of ``magnitude:K`` rows)."""
    n_classes: int
    cfg: AnalysisConfig
    store_digest: str = ""
    """The published store spec analysed: workers cache store handles by it (a store that grew
    is opened again)."""


@dataclass(frozen=True)
class Classes:
    """The classes of the dataset's images, with their tree distances (empty when unlabelled)."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]
    d: np.ndarray
