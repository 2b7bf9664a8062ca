"""The concept graph between layers (seed 004): codes per layer, node predictors, inference.

A dictionary (SAE or K-SVD) per hook turns each image into binary concepts per layer
(:mod:`vsae.graph.codes`); each concept of layer l+1 is predicted from layer l's concepts by an
ensemble of L1 logistic regressions on rebalanced resamples, solved in batches
(:mod:`vsae.graph.solver`, :mod:`vsae.graph.nodes`); the graph is scored on held-out images, run
through all layers (:mod:`vsae.graph.infer`) and written as tables (:mod:`vsae.graph.results`),
which :class:`vsae.Client` queries and exports (:mod:`vsae.graph.export`). The job is
:mod:`vsae.jobs.graph`. Importing this package imports no torch.
"""
