"""The model layer: hyperparameters (torch-free), architectures behind one registry, encoders and the output head."""
