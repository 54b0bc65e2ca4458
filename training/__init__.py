"""The embedded default model's data, training and evaluation (issue 8). Never imported by nodes."""
