"""layerdecay plugin for the swin family (work in progress)."""
