"""Sync and async clients with the same method names.

Arrays of `NPY_BODY_BYTES` or more travel as a `.npy` body (the other fields in the query
string), smaller ones as JSON; results come back as `.npy` where the route offers it. Requests
that meet a busy server (503) or a broken connection are retried with exponential backoff that
honours `Retry-After` (`RetryPolicy`): every route gives the same answer for the same seed, so a
retry is safe.

Images come back as PIL images only when asked for (`sample_images`): Pillow is imported then,
so the client itself needs nothing but httpx and numpy.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import httpx
import numpy as np
from numpy.typing import ArrayLike, NDArray

from service.client._errors import APIError, ConnectionFailed, LatentServeClientError

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_TIMEOUT = 30.0
NPY = "application/x-npy"
NPY_BODY_BYTES = 32 * 1024
"""Arrays this large or larger are sent as .npy bodies (JSON text of floats is 3-5x larger and
slower to write and parse)."""
Method = Literal["reconstruction", "elbo", "iwae", "elbo-complexity", "combined", "discriminator"]


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before trying a request again.

    Tries up to `attempts` times in all. Retried: answers with a status in `statuses` (503: the
    server is overloaded, or the model is loading) and transport errors (refused, reset or
    timed-out connections). The wait before try i+1 is `backoff_s * 2**i` (capped at
    `max_backoff_s`, with jitter so clients do not return in step), or the server's
    `Retry-After` when that is longer (capped at `max_retry_after_s`)."""

    attempts: int = 4
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    max_retry_after_s: float = 30.0
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({503}))

    def wait_s(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0**attempt) * random.uniform(0.5, 1.0)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_retry_after_s))
        return backoff


NO_RETRY = RetryPolicy(attempts=1)


def _retry_policy(retries: RetryPolicy | int | None) -> RetryPolicy:
    if retries is None:
        return NO_RETRY
    if isinstance(retries, int):
        return RetryPolicy(attempts=max(1, retries))
    return retries


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("retry-after")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


@dataclass
class _Request:
    """One request as httpx takes it: JSON, or a .npy body with the fields in the query."""

    path: str
    accept: str
    json_body: dict[str, Any] | None = None
    npy_body: bytes | None = None
    params: dict[str, str] | None = None

    def kwargs(self) -> dict[str, Any]:
        headers = {"Accept": self.accept}
        if self.npy_body is None:
            return {"json": self.json_body, "headers": headers}
        headers["Content-Type"] = NPY
        return {"content": self.npy_body, "params": self.params, "headers": headers}


@dataclass
class Encoding:
    mean: NDArray[np.float32]
    log_var: NDArray[np.float32]
    z: NDArray[np.float32] | None = None


@dataclass
class AnomalyScores:
    scores: NDArray[np.float32]
    threshold: float | None
    is_outlier: NDArray[np.bool_] | None
    per_pixel: NDArray[np.float32] | None = None


def _load_npy(content: bytes) -> NDArray[Any]:
    return np.lib.format.read_array(io.BytesIO(content), allow_pickle=False)


def _list(x: ArrayLike) -> Any:
    return np.asarray(x, dtype=np.float32).tolist()


def _npy(x: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(x), allow_pickle=False)
    return buf.getvalue()


def _labels(labels: ArrayLike | int | None) -> Any:
    if labels is None:
        return None
    return np.atleast_1d(np.asarray(labels, dtype=np.int64)).tolist()


ImageSource = bytes | str | os.PathLike[str]
"""An encoded PNG or JPEG: its bytes, or the path of a file holding it."""


def _image_files(images: Sequence[ImageSource]) -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart `images` fields, named after their files where they came from files."""
    files = []
    for i, item in enumerate(images):
        if isinstance(item, bytes):
            name, data = f"image-{i}", item
        else:
            path = Path(item)
            name, data = path.name, path.read_bytes()
        files.append(("images", (name, data)))
    return files


def _form(fields: dict[str, Any]) -> dict[str, str]:
    """Form fields as the server reads them: JSON values (numbers, lists), strings as they are."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


def _pil_images(encoded: list[str]) -> list[Image]:
    try:
        from PIL import Image as PILImage
    except ImportError as exc:
        raise LatentServeClientError("PIL images need Pillow: pip install pillow") from exc
    images: list[Image] = []
    for item in encoded:
        img = PILImage.open(io.BytesIO(base64.b64decode(item)))
        img.load()
        images.append(img)
    return images


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        err = response.json()["error"]
        code, message, field = err["code"], err["message"], err.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "http_error", response.text[:500], None
    retry = response.headers.get("retry-after")
    raise APIError(
        response.status_code,
        code,
        message,
        field,
        float(retry) if retry and retry.replace(".", "", 1).isdigit() else None,
    )


class _Requests:
    """What both clients send and how they read answers; only the transport differs."""

    def __init__(self, model: str | None, npy_body_bytes: int = NPY_BODY_BYTES) -> None:
        self.model = model
        self.npy_body_bytes = npy_body_bytes

    def body(self, **fields: Any) -> dict[str, Any]:
        if self.model is not None and fields.get("model") is None:
            fields["model"] = self.model
        return {k: v for k, v in fields.items() if v is not None}

    def with_array(
        self, path: str, name: str, array: ArrayLike, accept: str, **fields: Any
    ) -> _Request:
        """`fields` plus the array `name`: as JSON when small, as a .npy body when large."""
        x = np.asarray(array, dtype=np.float32)
        body = self.body(**fields)
        if x.nbytes < self.npy_body_bytes:
            return _Request(path, accept, json_body={**body, name: x.tolist()})
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
        return _Request(path, accept, npy_body=_npy(x), params=params)

    @staticmethod
    def array(response: httpx.Response) -> NDArray[Any]:
        _raise_for_error(response)
        return _load_npy(response.content)

    @staticmethod
    def json(response: httpx.Response) -> dict[str, Any]:
        _raise_for_error(response)
        data: dict[str, Any] = response.json()
        return data

    @staticmethod
    def scores(data: dict[str, Any]) -> AnomalyScores:
        outl = data.get("is_outlier")
        pix = data.get("per_pixel")
        return AnomalyScores(
            scores=np.asarray(data["scores"], dtype=np.float32),
            threshold=data.get("threshold"),
            is_outlier=None if outl is None else np.asarray(outl, dtype=bool),
            per_pixel=None if pix is None else np.asarray(pix, dtype=np.float32),
        )

    @staticmethod
    def encoding(data: dict[str, Any]) -> Encoding:
        z = data.get("z")
        return Encoding(
            np.asarray(data["mean"], dtype=np.float32),
            np.asarray(data["log_var"], dtype=np.float32),
            None if z is None else np.asarray(z, dtype=np.float32),
        )


class Client:
    """Blocking client. Methods return numpy arrays; errors raise `APIError` (after the
    retries of `retries`: a `RetryPolicy`, a number of attempts, or None for a single try)."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: RetryPolicy | int | None = RetryPolicy(),  # noqa: B008 (frozen, shared)
        npy_body_bytes: int = NPY_BODY_BYTES,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )
        self._r = _Requests(model, npy_body_bytes)
        self.retry = _retry_policy(retries)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ConnectionFailed(f"{method} {path}: {exc}") from exc
                time.sleep(self.retry.wait_s(attempt, None))
                continue
            if last or response.status_code not in self.retry.statuses:
                return response
            time.sleep(self.retry.wait_s(attempt, _retry_after(response)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _post(
        self, path: str, body: dict[str, Any] | _Request, accept: str = "application/json"
    ) -> httpx.Response:
        request = body if isinstance(body, _Request) else _Request(path, accept, json_body=body)
        return self._send("POST", path, **request.kwargs())

    def _post_files(
        self, path: str, fields: dict[str, Any], files: list[tuple[str, tuple[str, bytes]]]
    ) -> httpx.Response:
        try:
            return self._http.post(path, data=_form(fields), files=files)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"POST {path}: {exc}") from exc

    def _get(self, path: str) -> httpx.Response:
        return self._send("GET", path)

    def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._r.json(self._get("/models"))["models"]
        return models

    def model_info(self, name: str) -> dict[str, Any]:
        return self._r.json(self._get(f"/models/{name}"))

    def ready(self) -> bool:
        try:
            return self._get("/readyz").status_code == 200
        except ConnectionFailed:
            return False

    def sample(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> NDArray[np.float32]:
        body = self._r.body(
            model=model, n=n, seed=seed, temperature=temperature, labels=_labels(labels)
        )
        return self._r.array(self._post("/sample", body, NPY))

    def sample_png(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        scale: int = 1,
        model: str | None = None,
    ) -> bytes:
        """One PNG grid of `n` samples, each model pixel drawn as `scale` x `scale` pixels."""
        body = self._r.body(
            model=model,
            n=n,
            seed=seed,
            temperature=temperature,
            labels=_labels(labels),
            scale=scale,
        )
        response = self._post("/sample", body, "image/png")
        _raise_for_error(response)
        return response.content

    def encode(
        self,
        inputs: ArrayLike,
        *,
        samples_per_input: int = 0,
        seed: int = 0,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> Encoding:
        body = self._r.with_array(
            "/encode",
            "inputs",
            inputs,
            "application/json",
            model=model,
            labels=_labels(labels),
            samples_per_input=samples_per_input or None,
            seed=seed,
        )
        return self._r.encoding(self._r.json(self._post("/encode", body)))

    def decode(
        self, z: ArrayLike, *, labels: ArrayLike | int | None = None, model: str | None = None
    ) -> NDArray[np.float32]:
        body = self._r.with_array("/decode", "z", z, NPY, model=model, labels=_labels(labels))
        return self._r.array(self._post("/decode", body, NPY))

    def reconstruct(
        self, inputs: ArrayLike, *, labels: ArrayLike | int | None = None, model: str | None = None
    ) -> NDArray[np.float32]:
        body = self._r.with_array(
            "/reconstruct", "inputs", inputs, NPY, model=model, labels=_labels(labels)
        )
        return self._r.array(self._post("/reconstruct", body, NPY))

    def interpolate(
        self,
        start: ArrayLike,
        end: ArrayLike,
        *,
        steps: int = 8,
        mode: Literal["linear", "spherical"] = "linear",
        latent: bool = False,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> NDArray[np.float32]:
        """Path from `start` to `end`: inputs by default, latents with `latent=True`."""
        pair = [_list(start), _list(end)]
        body = self._r.body(
            model=model,
            steps=steps,
            mode=mode,
            labels=_labels(labels),
            **({"z": pair} if latent else {"inputs": pair}),
        )
        return self._r.array(self._post("/interpolate", body, NPY))

    def anomaly_score(
        self,
        inputs: ArrayLike,
        *,
        method: Method = "reconstruction",
        k: int = 16,
        seed: int = 0,
        threshold: float | None = None,
        per_pixel: bool = False,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> AnomalyScores:
        body = self._r.with_array(
            "/anomaly-score",
            "inputs",
            inputs,
            "application/json",
            model=model,
            method=method,
            k=k,
            seed=seed,
            threshold=threshold,
            per_pixel=per_pixel or None,
            labels=_labels(labels),
        )
        return self._r.scores(self._r.json(self._post("/anomaly-score", body)))

    def sample_images(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        scale: int = 1,
        model: str | None = None,
    ) -> list[Image]:
        """`n` samples as PIL images (imports Pillow), `scale` x `scale` pixels per model
        pixel; for models whose examples are images."""
        body = self._r.body(
            model=model,
            n=n,
            seed=seed,
            temperature=temperature,
            labels=_labels(labels),
            scale=scale,
            output_format="png",
        )
        return _pil_images(self._r.json(self._post("/sample", body))["images"])

    def anomaly_score_images(
        self,
        images: Sequence[ImageSource],
        *,
        method: Method = "reconstruction",
        k: int = 16,
        seed: int = 0,
        threshold: float | None = None,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> AnomalyScores:
        """Scores of PNG or JPEG images (bytes or file paths), uploaded as they are: the server
        converts them to the model's input as it converted the training images."""
        fields = self._r.body(
            model=model,
            method=method,
            k=k,
            seed=seed,
            threshold=threshold,
            labels=_labels(labels),
        )
        response = self._post_files("/anomaly-score", fields, _image_files(images))
        return self._r.scores(self._r.json(response))


class AsyncClient:
    """The same methods as `Client`, awaitable."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: RetryPolicy | int | None = RetryPolicy(),  # noqa: B008 (frozen, shared)
        npy_body_bytes: int = NPY_BODY_BYTES,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )
        self._r = _Requests(model, npy_body_bytes)
        self.retry = _retry_policy(retries)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(self.retry.attempts):
            last = attempt == self.retry.attempts - 1
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise ConnectionFailed(f"{method} {path}: {exc}") from exc
                await asyncio.sleep(self.retry.wait_s(attempt, None))
                continue
            if last or response.status_code not in self.retry.statuses:
                return response
            await asyncio.sleep(self.retry.wait_s(attempt, _retry_after(response)))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _post(
        self, path: str, body: dict[str, Any] | _Request, accept: str = "application/json"
    ) -> httpx.Response:
        request = body if isinstance(body, _Request) else _Request(path, accept, json_body=body)
        return await self._send("POST", path, **request.kwargs())

    async def _post_files(
        self, path: str, fields: dict[str, Any], files: list[tuple[str, tuple[str, bytes]]]
    ) -> httpx.Response:
        try:
            return await self._http.post(path, data=_form(fields), files=files)
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"POST {path}: {exc}") from exc

    async def _get(self, path: str) -> httpx.Response:
        return await self._send("GET", path)

    async def models(self) -> list[dict[str, Any]]:
        models: list[dict[str, Any]] = self._r.json(await self._get("/models"))["models"]
        return models

    async def model_info(self, name: str) -> dict[str, Any]:
        return self._r.json(await self._get(f"/models/{name}"))

    async def ready(self) -> bool:
        try:
            return (await self._get("/readyz")).status_code == 200
        except ConnectionFailed:
            return False

    async def sample(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> NDArray[np.float32]:
        body = self._r.body(
            model=model, n=n, seed=seed, temperature=temperature, labels=_labels(labels)
        )
        return self._r.array(await self._post("/sample", body, NPY))

    async def encode(
        self,
        inputs: ArrayLike,
        *,
        samples_per_input: int = 0,
        seed: int = 0,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> Encoding:
        body = self._r.with_array(
            "/encode",
            "inputs",
            inputs,
            "application/json",
            model=model,
            labels=_labels(labels),
            samples_per_input=samples_per_input or None,
            seed=seed,
        )
        return self._r.encoding(self._r.json(await self._post("/encode", body)))

    async def decode(
        self, z: ArrayLike, *, labels: ArrayLike | int | None = None, model: str | None = None
    ) -> NDArray[np.float32]:
        body = self._r.with_array("/decode", "z", z, NPY, model=model, labels=_labels(labels))
        return self._r.array(await self._post("/decode", body, NPY))

    async def reconstruct(
        self, inputs: ArrayLike, *, labels: ArrayLike | int | None = None, model: str | None = None
    ) -> NDArray[np.float32]:
        body = self._r.with_array(
            "/reconstruct", "inputs", inputs, NPY, model=model, labels=_labels(labels)
        )
        return self._r.array(await self._post("/reconstruct", body, NPY))

    async def sample_png(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        scale: int = 1,
        model: str | None = None,
    ) -> bytes:
        """One PNG grid of `n` samples, each model pixel drawn as `scale` x `scale` pixels."""
        body = self._r.body(
            model=model,
            n=n,
            seed=seed,
            temperature=temperature,
            labels=_labels(labels),
            scale=scale,
        )
        response = await self._post("/sample", body, "image/png")
        _raise_for_error(response)
        return response.content

    async def interpolate(
        self,
        start: ArrayLike,
        end: ArrayLike,
        *,
        steps: int = 8,
        mode: Literal["linear", "spherical"] = "linear",
        latent: bool = False,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> NDArray[np.float32]:
        """Path from `start` to `end`: inputs by default, latents with `latent=True`."""
        pair = [_list(start), _list(end)]
        body = self._r.body(
            model=model,
            steps=steps,
            mode=mode,
            labels=_labels(labels),
            **({"z": pair} if latent else {"inputs": pair}),
        )
        return self._r.array(await self._post("/interpolate", body, NPY))

    async def anomaly_score(
        self,
        inputs: ArrayLike,
        *,
        method: Method = "reconstruction",
        k: int = 16,
        seed: int = 0,
        threshold: float | None = None,
        per_pixel: bool = False,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> AnomalyScores:
        body = self._r.with_array(
            "/anomaly-score",
            "inputs",
            inputs,
            "application/json",
            model=model,
            method=method,
            k=k,
            seed=seed,
            threshold=threshold,
            per_pixel=per_pixel or None,
            labels=_labels(labels),
        )
        return self._r.scores(self._r.json(await self._post("/anomaly-score", body)))

    async def sample_images(
        self,
        n: int = 1,
        *,
        seed: int | None = None,
        temperature: float = 1.0,
        labels: ArrayLike | int | None = None,
        scale: int = 1,
        model: str | None = None,
    ) -> list[Image]:
        """`n` samples as PIL images (imports Pillow), `scale` x `scale` pixels per model
        pixel; for models whose examples are images."""
        body = self._r.body(
            model=model,
            n=n,
            seed=seed,
            temperature=temperature,
            labels=_labels(labels),
            scale=scale,
            output_format="png",
        )
        return _pil_images(self._r.json(await self._post("/sample", body))["images"])

    async def anomaly_score_images(
        self,
        images: Sequence[ImageSource],
        *,
        method: Method = "reconstruction",
        k: int = 16,
        seed: int = 0,
        threshold: float | None = None,
        labels: ArrayLike | int | None = None,
        model: str | None = None,
    ) -> AnomalyScores:
        """Scores of PNG or JPEG images (bytes or file paths), uploaded as they are: the server
        converts them to the model's input as it converted the training images."""
        fields = self._r.body(
            model=model,
            method=method,
            k=k,
            seed=seed,
            threshold=threshold,
            labels=_labels(labels),
        )
        response = await self._post_files("/anomaly-score", fields, _image_files(images))
        return self._r.scores(self._r.json(response))
