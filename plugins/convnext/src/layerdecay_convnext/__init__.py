"""layerdecay plugin for the convnext family (work in progress)."""
