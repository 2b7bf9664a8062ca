"""Analysis of stored activations and trained SAEs (SPEC 8): image-level activations, class means,
the WordNet D-matrix monosemanticity score, dataset examples, feature/neuron maps."""
