"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`), served by
grpc.aio on the HTTP server's event loop, so it calls the same data plane, batchers and
repository as the REST routes.

The app's lifespan starts it after the models load (`GrpcFrontDoor.start`, when
`LATENTSERVE_GRPC_PORT` is set) and stops it before they close: new calls are refused, calls in
flight get `grpc_grace_s` to finish. Every call runs through `_rpc`, which does what the HTTP
middleware and handlers do for REST: request id, API key (`authorization` metadata; not needed
by ServerLive and ServerReady), errors as status codes (`service.oip.errors`), request metrics and
an access log line.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from service import __version__
from service.api.metrics import Metrics
from service.auth import API_KEY_HINT, api_key_accepted
from service.errors import InvalidInput, LatentServeError, ModelUnavailable, Unauthorized
from service.logs import model_var, request_id_from, request_id_var
from service.oip import mapping
from service.oip.errors import INTERNAL_MESSAGE, grpc_code_name, message, retry_after
from service.oip.grpc_v2 import open_inference_grpc_pb2 as pb
from service.oip.grpc_v2 import open_inference_grpc_pb2_grpc as pb_grpc
from service.oip.protocol import (
    EXTENSIONS,
    SERVER_NAME,
    InferRequest,
    InferResponse,
    Param,
    shape_of,
    tensor_bytes,
    tensor_from_bytes,
    tensor_from_values,
)
from service.runtime.dataplane import DataPlane
from service.settings import Settings

log = logging.getLogger("latentserve.access")
SERVICE = "inference.GRPCInferenceService"
_CONTENTS = {"FP32": "fp32_contents", "INT64": "int64_contents", "BOOL": "bool_contents"}

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Req, Context], Awaitable[Resp]]


# -- messages <-> protocol ----------------------------------------------------------------------
def _param(p: pb.InferParameter) -> Param | None:
    kind = p.WhichOneof("parameter_choice")
    if kind is None:
        return None
    value: Param = getattr(p, kind)
    return value


def _set_param(p: pb.InferParameter, value: Param) -> None:
    if isinstance(value, bool):
        p.bool_param = value
    elif isinstance(value, int):
        p.int64_param = value
    elif isinstance(value, float):
        p.double_param = value
    else:
        p.string_param = value


def decode_request(req: pb.ModelInferRequest, timeout_s: float | None) -> InferRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs: give one "
            "per input, in order, or none",
            field="raw_input_contents",
        )
    request = InferRequest(req.model_name, req.model_version or None, req.id or None)
    for i, t in enumerate(req.inputs):
        shape = shape_of(list(t.shape), t.name)
        if raw:
            request.inputs.append(tensor_from_bytes(t.name, t.datatype, shape, raw[i]))
            continue
        contents = _CONTENTS.get(t.datatype)
        if contents is None:
            raise InvalidInput(f"{t.datatype} data goes in raw_input_contents", field=t.name)
        values = getattr(t.contents, contents)
        request.inputs.append(tensor_from_values(t.name, t.datatype, shape, list(values)))
    params = {k: _param(v) for k, v in req.parameters.items()}
    request.parameters = {k: v for k, v in params.items() if v is not None}
    request.outputs = [o.name for o in req.outputs] or None
    request.timeout_s = timeout_s
    return request


def encode_response(answer: InferResponse) -> pb.ModelInferResponse:
    """Outputs always as raw contents, as Triton answers: no per-value protobuf encoding."""
    out = pb.ModelInferResponse(
        model_name=answer.model_name, model_version=answer.model_version, id=answer.id or ""
    )
    for t in answer.outputs:
        out.outputs.add(name=t.name, datatype=t.datatype, shape=t.data.shape)
        out.raw_output_contents.append(tensor_bytes(t))
    for key, value in answer.parameters.items():
        _set_param(out.parameters[key], value)
    return out


# -- the service --------------------------------------------------------------------------------
def _rpc(authenticated: bool = True) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    """Request id, API key, errors as status codes, metrics and an access log line."""

    def wrap(method: Handler[Req, Resp]) -> Handler[Req, Resp]:
        endpoint = f"/{SERVICE}/{method.__name__}"

        @functools.wraps(method)
        async def call(self: InferenceService, request: Req, context: Context) -> Resp:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            rid = request_id_from(metadata.get("x-request-id"))
            context.set_trailing_metadata((("x-request-id", rid),))
            token, model_token = request_id_var.set(rid), model_var.set(None)
            started = time.perf_counter()
            status = "OK"
            try:
                if authenticated and not api_key_accepted(
                    self.settings.api_key, metadata.get("authorization")
                ):
                    raise Unauthorized(API_KEY_HINT, field="authorization")
                return await method(self, request, context)
            except LatentServeError as exc:
                status = grpc_code_name(exc)
                if status == "INTERNAL":
                    log.error("request failed: %s", exc.message)
                wait = retry_after(exc)
                if wait is not None:
                    context.set_trailing_metadata((("x-request-id", rid), ("retry-after", wait)))
                await context.abort(grpc.StatusCode[status], message(exc))
                raise  # abort raises; never reached
            except grpc.aio.AbortError:
                raise
            except Exception:
                status = "INTERNAL"
                log.exception("unhandled error")
                await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
                raise
            finally:
                elapsed = time.perf_counter() - started
                self.metrics.requests.labels(endpoint, "GRPC", status).inc()
                self.metrics.request_seconds.labels(endpoint).observe(elapsed)
                log.info(
                    "GRPC %s %s %.1fms",
                    endpoint,
                    status,
                    elapsed * 1000,
                    extra={"status": status, "duration_ms": round(elapsed * 1000, 3)},
                )
                request_id_var.reset(token)
                model_var.reset(model_token)

        return call

    return wrap


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.plane = plane
        self.settings = settings
        self.metrics = metrics

    @_rpc(authenticated=False)
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @_rpc(authenticated=False)
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.plane.repository.ready)

    @_rpc()
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        try:
            mapping.resolve(self.plane, request.name, request.version or None)
        except ModelUnavailable:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_rpc()
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=list(EXTENSIONS)
        )

    @_rpc()
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        t = mapping.resolve(self.plane, request.name, request.version or None)
        meta = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=t.name,
            versions=[t.version],
            platform=t.platform,
            inputs=[meta(name=m.name, datatype=m.datatype, shape=m.shape) for m in t.inputs],
            outputs=[meta(name=m.name, datatype=m.datatype, shape=m.shape) for m in t.outputs],
        )

    @_rpc()
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        target = mapping.resolve(self.plane, request.model_name, request.model_version or None)
        parsed = decode_request(request, context.time_remaining())
        return encode_response(await mapping.infer(self.plane, target, parsed))


class GrpcFrontDoor:
    """The gRPC server's life: bound and started at startup, drained at shutdown."""

    def __init__(self, plane: DataPlane, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        # Several `serve --workers` processes bind one port, as uvicorn's workers share theirs;
        # a lone process does not, so a second server on a taken port fails instead of
        # silently sharing it.
        shared = settings.shared_state_dir is not None
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_request_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if shared else 0),
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceService(plane, settings, metrics), self.server
        )
        self.address = f"{settings.grpc_host}:{settings.grpc_port}"
        self.port = 0

    async def start(self) -> None:
        try:
            self.port = self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise RuntimeError(f"cannot serve gRPC on {self.address}: {exc}") from None
        if not self.port:
            raise RuntimeError(f"cannot serve gRPC on {self.address}: the port is taken")
        await self.server.start()
        logging.getLogger("latentserve").info("serving gRPC on %s", self.address)

    async def stop(self) -> None:
        await self.server.stop(self.settings.grpc_grace_s)
