"""Inference runtime: ONNX Runtime sessions, dynamic batching, model operations, the repository.

Nothing here knows about HTTP; the API layer calls `ModelRepository` and `GenerativeModel`.
"""
