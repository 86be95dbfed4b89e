"""layerdecay plugin for the vit family (work in progress)."""
