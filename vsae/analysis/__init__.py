"""Analysis of stored activations and trained SAEs (SPEC 8): image-level activations, class means,
the WordNet D-matrix monosemanticity score, dataset examples, feature/neuron maps.

WordNet and the class tree live in :mod:`vsae.analysis.wordnet` (also a command:
``python -m vsae.analysis.wordnet install``); it and the torch-based statistics are imported on
first use.
"""

from vsae.analysis.config import AnalysisConfig

_WORDNET = ("ClassTree", "class_distances", "class_tree", "imagenet_wnids", "load_wordnet")
_STATS = ("UnitStats", "image_level", "mono")

__all__ = ["AnalysisConfig", *_STATS, *_WORDNET]


def __getattr__(name: str):
    if name in _WORDNET:
        from vsae.analysis import wordnet

        return getattr(wordnet, name)
    if name in _STATS:
        from vsae.analysis import stats

        return getattr(stats, name)
    raise AttributeError(f"module 'vsae.analysis' has no attribute {name!r}")
