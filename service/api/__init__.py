"""HTTP layer: FastAPI app factory, request/response schemas, codecs, routes. Knows nothing of
ONNX; it calls `service.runtime`."""
