"""The peer: NVIDIA Triton's dynamic batcher through PyTriton, serving the same ONNX graphs.

For each model named, the graph behind latentserve's `/decode` (the decoder, or a GAN's
generator) is bound as `<model>.<part>`, the name latentserve's Open Inference Protocol front
door gives it, with the graph's own tensor names; so the benchmark's `oip-json`, `oip-binary`
and `grpc` requests go unchanged to either server. Triton's dynamic batcher batches up to the
same `--max-batch` as latentserve's, with no queue delay (latentserve's default), and the batch
runs in ONNX Runtime on the CPU, as latentserve's does.

Runs under its own interpreter (PyTriton pins its own packages; `scripts/install-pytriton.sh`
makes `.venv-pytriton`), so it imports only numpy, onnxruntime and pytriton, and reads the
manifest as plain JSON.

    .venv-pytriton/bin/python -m bench.pytriton_server --models models \\
        --model mnist-conv-vae --port 8000
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

DECODE_ROLES = ("decoder", "generator")  # the part behind /decode, in the order latentserve picks


def decode_part(folder: Path) -> tuple[str, dict[str, Any]]:
    """(role, the part's manifest entry) for the graph `/decode` runs."""
    parts = json.loads((folder / "model.json").read_text())["parts"]
    for role in DECODE_ROLES:
        if role in parts:
            return role, parts[role]
    raise SystemExit(f"{folder}: no decoder or generator part")


def infer_function(session: Any) -> Callable[..., dict[str, np.ndarray]]:
    """One ORT run per batch Triton forms, under the graph's own tensor names."""
    from pytriton.decorators import batch

    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]

    @batch  # type: ignore[untyped-decorator]
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        z = np.ascontiguousarray(inputs[input_name], dtype=np.float32)
        return dict(zip(output_names, session.run(output_names, {input_name: z}), strict=True))

    return infer  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.pytriton_server", description=__doc__)
    p.add_argument("--models", type=Path, required=True, help="model repository")
    p.add_argument("--model", action="append", required=True, help="model to serve (repeatable)")
    p.add_argument("--port", type=int, required=True, help="HTTP port")
    p.add_argument("--grpc-port", type=int, required=True)
    p.add_argument("--metrics-port", type=int, required=True)
    p.add_argument("--max-batch", type=int, default=256, help="Triton's max_batch_size")
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: ORT's)")
    args = p.parse_args(argv)

    import onnxruntime as ort
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
    )
    with Triton(config=config) as triton:
        for model in args.model:
            folder = args.models / model
            role, part = decode_part(folder)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            session = ort.InferenceSession(
                str(folder / part["path"]), options, providers=["CPUExecutionProvider"]
            )
            inputs = [
                Tensor(name=i.name, dtype=np.float32, shape=tuple(i.shape[1:]))
                for i in session.get_inputs()
            ]
            outputs = [
                Tensor(name=o.name, dtype=np.float32, shape=tuple(o.shape[1:]))
                for o in session.get_outputs()
            ]
            triton.bind(
                model_name=f"{model}.{role}",
                infer_func=infer_function(session),
                inputs=inputs,
                outputs=outputs,
                config=ModelConfig(max_batch_size=args.max_batch, batcher=DynamicBatcher()),
                strict=False,
            )
        print(f"pytriton serving {', '.join(args.model)} on 127.0.0.1:{args.port}", flush=True)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
