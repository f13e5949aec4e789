"""KServe's `InferenceRESTClient` (protocol v2) against a latentserve server, as a KServe user's
script would run it; test_oip_clients runs this file in its own interpreter and checks what it
wrote.

KServe's and Triton's Python clients register the same `inference.*` protobuf messages, so one
process cannot import both (protobuf: "duplicate symbol 'inference.ServerLiveRequest'"); the
Triton clients run in the test process and this one runs apart.

    python tests/kserve_v2_client.py URL API_KEY OUT.npz
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _z() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((16, 32)).astype(np.float32)


async def run(url: str, key: str, out: Path) -> None:
    def auth() -> dict[str, str]:  # fresh per call: the client adds its own headers to it
        return {"Authorization": f"Bearer {key}"}

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    facts: dict[str, object] = {
        "live": await client.is_server_live(url),
        "ready": await client.is_server_ready(url),
        "model_ready": await client.is_model_ready(url, "mnist-conv-vae.decoder", headers=auth()),
        "unknown_ready": await client.is_model_ready(url, "nope.decoder", headers=auth()),
    }
    arrays: dict[str, np.ndarray] = {"z": _z()}
    for binary in (False, True):
        tensor = InferInput("z", [16, 32], "FP32")
        tensor.set_data_from_numpy(arrays["z"], binary_data=binary)
        request = InferRequest(
            "mnist-conv-vae.decoder",
            [tensor],
            request_id=f"kserve-{binary}",
            parameters={"binary_data_output": binary},
        )
        response = await client.infer(
            url, request, model_name="mnist-conv-vae.decoder", headers=auth()
        )
        arrays[f"x_{'binary' if binary else 'json'}"] = response.outputs[0].as_numpy()
        facts[f"id_{binary}"] = response.id
    sample = InferRequest("mnist-conv-vae.sample", [], parameters={"n": 3, "seed": 5})
    response = await client.infer(url, sample, model_name="mnist-conv-vae.sample", headers=auth())
    arrays["sample"] = next(o for o in response.outputs if o.name == "x").as_numpy()
    try:
        await client.infer(url, sample, model_name="nope.sample", headers=auth())
    except Exception as exc:  # httpx.HTTPStatusError, reported to the test as text
        facts["unknown_error"] = f"{type(exc).__name__}: {exc}"
    await client.close()
    np.savez(out, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
    out.with_suffix(".json").write_text(json.dumps(facts))


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
