"""Ray Serve: the same FastAPI app, one whole copy per replica, behind Ray's HTTP proxy.

    serve run service.ray_serve:build_app                       # settings from LATENTSERVE_*
    serve run service.ray_serve:build_app ray_num_replicas=4    # or as arguments

Each replica builds the app itself (an app holds sessions, threads and locks, which cannot be
pickled and shipped from the driver), from the settings the driver resolved, so every replica
runs the same configuration whatever its node's environment says. Ray waits for the app's
lifespan before routing to a replica: every enabled model is loaded by then. Each replica batches
its own requests; responses carry `X-Serve-Replica`, the replica that answered.

Ray is imported only inside `build_app`: the rest of `service` never needs it installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from service.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve import Application
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPLICA_HEADER = "x-serve-replica"
DEPLOYMENT_NAME = "latentserve"


def replica_settings(settings: Settings) -> Settings:
    """The settings one replica runs with. Left at 0, ONNX Runtime's threads per batch come
    from the CPUs Ray reserves for the replica instead of the node's cores: replicas sharing a
    node would otherwise each start a thread per core and fight over them."""
    if settings.intra_op_threads:
        return settings
    threads = max(1, int(settings.ray_replica_cpus) // settings.max_concurrent_batches)
    return settings.model_copy(update={"intra_op_threads": threads})


def deployment_options(settings: Settings) -> dict[str, Any]:
    """`@serve.deployment` options from the `ray_*` settings: a fixed replica count, or an
    autoscaling range when `ray_autoscaling` is on (Ray takes one or the other)."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": settings.ray_max_ongoing_requests,
        "ray_actor_options": {
            "num_cpus": settings.ray_replica_cpus,
            "num_gpus": settings.ray_replica_gpus,
        },
    }
    if settings.ray_autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": settings.ray_min_replicas,
            "max_replicas": settings.ray_max_replicas,
            "target_ongoing_requests": settings.ray_target_ongoing_requests,
        }
    else:
        options["num_replicas"] = settings.ray_num_replicas
    return options


class ReplicaHeader:
    """ASGI middleware adding `X-Serve-Replica: <replica id>` to every response, so a client
    (and the tests) can tell which replica answered."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._replica: bytes | None = None

    def _replica_id(self) -> bytes:
        if self._replica is None:
            from ray import serve

            self._replica = serve.get_replica_context().replica_id.unique_id.encode()
        return self._replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REPLICA_HEADER.encode(), self._replica_id()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


def app_builder(settings: Settings) -> Callable[[], FastAPI]:
    """The function Ray calls on each replica to build its app (see the module docstring)."""

    def build() -> FastAPI:
        from service.api.app import create_app

        app = create_app(replica_settings(settings))
        app.add_middleware(ReplicaHeader)
        return app

    return build


def build_app(args: Mapping[str, str] | None = None) -> Application:
    """The Ray Serve application: `serve run service.ray_serve:build_app [name=value ...]`.
    `args` override settings by field name (`ray_num_replicas=4`); LATENTSERVE_* variables and
    `.env` fill in the rest, read once here in the driver."""
    from ray import serve

    overrides: dict[str, Any] = dict(args or {})
    settings = Settings(**overrides)

    class LatentServe:
        """One replica: the whole latentserve app, built by `app_builder` on the replica."""

    ingress = serve.ingress(app_builder(settings))(LatentServe)
    return serve.deployment(**deployment_options(settings))(ingress).bind()
