"""latentserve: serve deep generative models exported to ONNX.

This package must stay importable with nothing but pydantic and numpy installed: the manifest
(`service.manifest`) is shared with `training`, and the client (`service.client`) installs with the
``client`` extra only. Server-side modules import FastAPI and ONNX Runtime themselves.
"""

__version__ = "0.1.0"
