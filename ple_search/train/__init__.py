"""The training layer: the Lightning module, the training engine, task weighting and metrics."""
