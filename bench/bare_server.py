"""NOT A MODEL SERVER: the HTTP limit. A bare ASGI app on the same uvicorn stack as latentserve
(httptools, uvloop) that reads each request's body and answers with fixed bytes of the size
latentserve answers the same request with. Whatever latentserve measures below it is the price of
everything but HTTP: parsing, validation, the model, encoding, logs and metrics.

    python -m bench.bare_server --sizes sizes.json --port 8100

`sizes.json` maps a request (its path and query string, body length and Accept header: what
tells the benchmark's workloads apart) to `[content_type, bytes]`; `response_sizes` makes it by
sending each workload's request once to the real app in process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path
from typing import Any

import uvicorn
from starlette.types import Receive, Scope, Send

from bench.workloads import HttpRequest, Prepared

Sizes = dict[str, tuple[str, int]]


def request_key(path: str, query: str, body_bytes: int, accept: str) -> str:
    accept = "" if accept in ("", "*/*") else accept  # both get the server's default type
    return f"{path}?{query} {body_bytes} {accept}"


def key_of(request: HttpRequest) -> str:
    """`request_key` of a request the benchmark sends."""
    path, _, query = request.path.partition("?")
    return request_key(path, query, len(request.content), request.headers.get("accept", ""))


def response_sizes(prepared: list[Prepared], repository: Path) -> Sizes:
    """Each HTTP workload's answer from latentserve itself (in process, real app): its media
    type and length."""
    import httpx

    from service.api.app import create_app
    from service.settings import Settings

    models = sorted({p.model for p in prepared})
    settings = Settings(
        model_repository=repository,
        providers=["cpu"],
        enabled_models=models,
        default_model=models[0],
        log_level="WARNING",
    )
    app = create_app(settings)

    async def probe() -> Sizes:
        sizes: Sizes = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as c:
                for p in prepared:
                    if p.workload.encoding == "grpc":
                        continue
                    r = await c.post(
                        p.request.path, content=p.request.content, headers=p.request.headers
                    )
                    r.raise_for_status()
                    media = r.headers.get("content-type", "application/json")
                    sizes[key_of(p.request)] = (media, len(r.content))
        return sizes

    return asyncio.run(probe())


class BareApp:
    def __init__(self, sizes: Sizes) -> None:
        self.answers: dict[str, tuple[list[tuple[bytes, bytes]], bytes]] = {}
        for key, (media, length) in sizes.items():
            headers = [(b"content-type", media.encode()), (b"content-length", str(length).encode())]
            self.answers[key] = (headers, b"0" * length)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        more, length = True, 0
        while more:  # read the whole body, as a server must
            message = await receive()
            length += len(message.get("body", b""))
            more = message.get("more_body", False)
        accept = next((v for k, v in scope["headers"] if k == b"accept"), b"")
        query = scope["query_string"].decode("latin-1")
        key = request_key(scope["path"], query, length, accept.decode("latin-1"))
        found = self.answers.get(key)
        if found is None:  # /readyz, and anything not measured
            headers, body = [(b"content-length", b"0")], b""
            status = 200 if scope["path"] == "/readyz" else 404
        else:
            (headers, body), status = found, 200
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=Path, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args()
    raw: dict[str, Any] = json.loads(args.sizes.read_text())
    sizes = {k: (str(v[0]), int(v[1])) for k, v in raw.items()}
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    uvicorn.run(
        BareApp(sizes), host=args.host, port=args.port, log_level="warning", access_log=False
    )


if __name__ == "__main__":
    main()
