"""The serving layer: torch-free serving settings and limits, cost measures, engines, production training."""
