"""Propensity models: features, scorers (ONNX and priors), the model registry,
training and the simulator."""
