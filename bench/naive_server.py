"""BASELINE, NOT THE SERVICE: the minimal FastAPI app users write themselves.

One ONNX Runtime session per model part, default session options, one inference per request, no
batching; request bodies through pydantic, JSON responses through `.tolist()` and FastAPI's
encoder. It speaks the same wire format as latentserve for the benchmarked routes (`/sample`,
`/anomaly-score` with method `reconstruction`, JSON or `.npy` bodies and responses) so the same
requests reach both.

    python -m bench.naive_server --models models --port 8100
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

NPY = "application/x-npy"


class SampleBody(BaseModel):
    model: str
    n: int = 1
    seed: int | None = None


class ScoreBody(BaseModel):
    model: str
    inputs: list[Any]
    method: str = "reconstruction"


def load_models(folder: Path) -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for manifest_path in sorted(folder.glob("*/model.json")):
        manifest = json.loads(manifest_path.read_text())
        sessions = {
            role: ort.InferenceSession(
                str(manifest_path.parent / part["path"]), providers=["CPUExecutionProvider"]
            )
            for role, part in manifest["parts"].items()
        }
        models[manifest["name"]] = {"manifest": manifest, "sessions": sessions}
    return models


def create_app(folder: Path) -> FastAPI:
    app = FastAPI(title="naive baseline (bench only)")
    models = load_models(folder)

    def wants_npy(request: Request) -> bool:
        return NPY in request.headers.get("accept", "")

    def npy_response(x: np.ndarray) -> Response:
        buf = io.BytesIO()
        np.save(buf, x)
        return Response(buf.getvalue(), media_type=NPY)

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/sample", response_model=None)
    def sample(body: SampleBody, request: Request) -> dict[str, Any] | Response:
        m = models[body.model]
        sessions = m["sessions"]
        session = sessions.get("decoder") or sessions["generator"]
        rng = np.random.default_rng(body.seed)
        z = rng.standard_normal((body.n, m["manifest"]["latent_dim"])).astype(np.float32)
        x = session.run(None, {"z": z})[0]
        if wants_npy(request):
            return npy_response(x)
        return {"model": body.model, "seed": body.seed, "samples": x.tolist()}

    def score(model: str, x: np.ndarray) -> np.ndarray:
        sessions = models[model]["sessions"]
        mean, _ = sessions["encoder"].run(None, {"x": x})
        x_hat = sessions["decoder"].run(None, {"z": mean})[0]
        result: np.ndarray = ((x - x_hat) ** 2).reshape(len(x), -1).mean(axis=1)
        return result

    @app.post("/anomaly-score", response_model=None)
    async def anomaly_score(request: Request) -> dict[str, Any] | Response:
        if request.headers.get("content-type", "").startswith(NPY):
            model = request.query_params["model"]
            x = np.load(io.BytesIO(await request.body()), allow_pickle=False)
        else:
            body = ScoreBody.model_validate_json(await request.body())
            model = body.model
            x = np.array(body.inputs, dtype=np.float32)
        scores = await run_in_threadpool(score, model, x.astype(np.float32))
        if wants_npy(request):
            return npy_response(scores)
        return {"model": model, "scores": scores.tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    args = parser.parse_args()
    uvicorn.run(create_app(args.models), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
