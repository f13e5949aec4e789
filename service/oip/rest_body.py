"""REST inference bodies both ways: JSON tensors, and the binary tensor data extension.

A binary request is the JSON header, then the raw bytes of every input whose parameters carry
`binary_data_size`, in input order; the `Inference-Header-Content-Length` header gives the JSON's
length. Outputs are binary when the request's parameter `binary_data_output` is true or an
output's own parameter `binary_data` is (that one wins), and FP16 outputs always are (the
protocol has no JSON form for them); the answer is then laid out the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from service.errors import InvalidInput
from service.oip.protocol import (
    BINARY_ONLY,
    InferRequest,
    InferResponse,
    Param,
    Tensor,
    json_values,
    shape_of,
    tensor_bytes,
    tensor_from_bytes,
    tensor_from_values,
)

HEADER_LENGTH = "inference-header-content-length"
BINARY_MEDIA_TYPE = "application/octet-stream"
JSON_MEDIA_TYPE = "application/json"


@dataclass
class OutputEncoding:
    """Which outputs travel as binary data: those asked for so, and FP16 always."""

    default: bool = False
    per_output: dict[str, bool] = field(default_factory=dict)

    def binary(self, t: Tensor) -> bool:
        return t.datatype in BINARY_ONLY or self.per_output.get(t.name, self.default)


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{where} must be a JSON object", field=where)
    return value


def _parameters(value: Any, where: str) -> dict[str, Param]:
    if value is None:
        return {}
    params = _object(value, where)
    for key, v in params.items():
        if not isinstance(v, bool | int | float | str):
            raise InvalidInput("must be a boolean, number or string", field=f"{where}.{key}")
    return params


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        n = int(header_length)
    except ValueError:
        n = -1
    if not 0 <= n <= len(body):
        raise InvalidInput(
            f"must be the JSON header's length, 0 to {len(body)} bytes",
            field="Inference-Header-Content-Length",
        )
    return body[:n], memoryview(body)[n:]


def decode_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str | None
) -> tuple[InferRequest, OutputEncoding]:
    """The request and how its outputs are to be encoded."""
    head, binary = _split(body, header_length)
    if not head:
        raise InvalidInput("request body is empty; send the inference request's JSON", "body")
    try:
        doc = _object(orjson.loads(head), "body")
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body is not valid JSON: {exc}", field="body") from None
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise InvalidInput("'inputs' must be a list of tensors", field="inputs")
    request = InferRequest(model_name, model_version)
    offset = 0
    for i, raw in enumerate(raw_inputs):
        item = _object(raw, f"inputs[{i}]")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput("every input needs a 'name'", field=f"inputs[{i}].name")
        shape = shape_of(item.get("shape"), name)
        size = _parameters(item.get("parameters"), f"inputs[{i}].parameters").get(
            "binary_data_size"
        )
        if size is None:
            request.inputs.append(
                tensor_from_values(name, item.get("datatype"), shape, item.get("data"))
            )
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidInput("binary_data_size must be a byte count", field=name)
        if offset + size > len(binary):
            raise InvalidInput(f"binary_data_size {size} runs past the end of the body", field=name)
        chunk = binary[offset : offset + size]
        request.inputs.append(tensor_from_bytes(name, item.get("datatype"), shape, chunk))
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the body has {len(binary) - offset} bytes after the inputs' binary data",
            field="body",
        )
    params = _parameters(doc.get("parameters"), "parameters")
    encoding = OutputEncoding(default=params.pop("binary_data_output", False) is True)
    raw_outputs = doc.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise InvalidInput("'outputs' must be a list", field="outputs")
        request.outputs = []
        for i, raw in enumerate(raw_outputs):
            item = _object(raw, f"outputs[{i}]")
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidInput("every output needs a 'name'", field=f"outputs[{i}].name")
            request.outputs.append(name)
            wanted = _parameters(item.get("parameters"), f"outputs[{i}].parameters")
            if "binary_data" in wanted:
                encoding.per_output[name] = wanted["binary_data"] is True
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string", field="id")
    request.id = request_id
    request.parameters = params
    return request, encoding


def encode_response(response: InferResponse, encoding: OutputEncoding) -> tuple[bytes, int | None]:
    """The body, and the JSON header's length when binary data follows it (else None)."""
    head: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        head["id"] = response.id
    if response.parameters:
        head["parameters"] = response.parameters
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for t in response.outputs:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.data.shape)}
        if encoding.binary(t):
            raw = tensor_bytes(t)
            out["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            out["data"] = json_values(t)
        outputs.append(out)
    head["outputs"] = outputs
    text = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
