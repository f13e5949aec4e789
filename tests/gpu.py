"""Whether ONNX Runtime can really run on CUDA here (listing the provider is not enough)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


@lru_cache
def cuda_works() -> bool:
    import onnxruntime as ort

    from service.runtime.sessions import SessionConfig, create_session

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    model = Path(__file__).resolve().parent.parent / "models" / "digits-vae" / "decoder.onnx"
    try:
        session = create_session(model, SessionConfig(providers=("cuda",), require_gpu=True))
    except Exception:
        return False
    return bool(session.get_providers()[0] == "CUDAExecutionProvider")
