"""Benchmarks for latentserve: `python -m bench` (see docs/benchmarks.md).

Measures, in one run and on the same models and requests, the service with batching on and off,
the in-process ONNX Runtime ceiling, and a naive FastAPI baseline (`bench/naive_server.py`).
"""
