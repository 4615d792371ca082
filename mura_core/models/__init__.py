"""Models: the architecture registry, the checkpoint format, the weights folder and devices."""
