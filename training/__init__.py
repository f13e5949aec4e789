"""Training side of latentserve: datasets, models, losses, training, evaluation, ONNX export.

This is the only package that imports torch. What it hands to the service is a model folder:
ONNX files plus a `service.manifest.Manifest`.
"""
