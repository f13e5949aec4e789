"""Python client for a latentserve server. Needs only httpx and numpy (`pip install
'latentserve[client]'`).

    from service.client import Client
    with Client("http://127.0.0.1:8000") as c:
        samples = c.sample(16, seed=0)            # numpy array (16, *input_shape)
        scores = c.anomaly_score(samples).scores
        images = c.sample_images(4, seed=0)       # PIL images (Pillow imported on demand)
"""

from service.client._client import (
    DEFAULT_TIMEOUT,
    NO_RETRY,
    NPY_BODY_BYTES,
    AnomalyScores,
    AsyncClient,
    Client,
    Encoding,
    ImageSource,
    Method,
    RetryPolicy,
)
from service.client._errors import APIError, ConnectionFailed, LatentServeClientError

__all__ = [
    "DEFAULT_TIMEOUT",
    "NO_RETRY",
    "NPY_BODY_BYTES",
    "RetryPolicy",
    "APIError",
    "AnomalyScores",
    "AsyncClient",
    "Client",
    "ConnectionFailed",
    "Encoding",
    "ImageSource",
    "LatentServeClientError",
    "Method",
]
