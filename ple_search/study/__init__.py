"""The study layer: search spaces, the study record, pruning, Pareto math, storages, the search loop, one trial, workers, tracking."""
