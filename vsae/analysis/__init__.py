"""Analysis of stored activations and trained SAEs (SPEC 8): image-level activations, class means,
the WordNet D-matrix monosemanticity score, dataset examples, feature/neuron maps.

WordNet and the class tree live in :mod:`vsae.analysis.wordnet` (also a command:
``python -m vsae.analysis.wordnet install``), imported on first use so that the command runs
without importing its own package twice.
"""

from vsae.analysis.stats import AnalysisConfig, UnitStats, image_level, mono

_WORDNET = ("ClassTree", "class_distances", "class_tree", "imagenet_wnids", "load_wordnet")

__all__ = ["AnalysisConfig", "UnitStats", "image_level", "mono", *_WORDNET]


def __getattr__(name: str):
    if name in _WORDNET:
        from vsae.analysis import wordnet

        return getattr(wordnet, name)
    raise AttributeError(f"module 'vsae.analysis' has no attribute {name!r}")
