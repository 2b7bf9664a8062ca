"""Toy models of superposition (Jermyn et al. 2022, seed 002): the model and its tasks, the
monosemanticity measures, sweeps, and toy hidden layers written as stores with known features.

Importing this package needs no torch: :mod:`vsae.toy.config` is torch-free, the rest imports
torch when used.
"""

from vsae.toy.config import ToyConfig, checkpoint_steps

__all__ = ["ToyConfig", "checkpoint_steps"]
