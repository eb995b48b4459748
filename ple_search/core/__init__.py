"""The bottom layer: error types, safe file reading and durable writes (no torch, no optuna)."""
