"""One error hierarchy for the whole service; `service.api.errors` maps it to HTTP in one place.

LatentServeError                 500  internal_error
├── InvalidInput                 422  invalid_input      (names the offending field)
├── PayloadTooLarge              413  payload_too_large
├── UnsupportedMediaType         415  unsupported_media_type
├── NotAcceptable                406  not_acceptable
├── Unauthorized                 401  unauthorized
├── ModelNotFound                404  model_not_found
├── OperationNotSupported        422  operation_not_supported  (e.g. /encode on a GAN)
├── Overloaded                   503  overloaded          (queue wait too long; Retry-After)
│   └── DeadlineExceeded         503  deadline_exceeded   (past the request's timeout)
├── ModelUnavailable             503  model_unavailable   (loading or failed)
└── ModelLoadError               409  model_load_error    (on reload; else reported, skipped)
    └── ChecksumMismatch
ProviderUnavailable              ---  CUDA asked for with require_gpu but not present
"""

from __future__ import annotations


class LatentServeError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidInput(LatentServeError):
    status_code = 422
    code = "invalid_input"


class PayloadTooLarge(LatentServeError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(LatentServeError):
    status_code = 415
    code = "unsupported_media_type"


class NotAcceptable(LatentServeError):
    status_code = 406
    code = "not_acceptable"


class Unauthorized(LatentServeError):
    status_code = 401
    code = "unauthorized"


class ModelNotFound(LatentServeError):
    status_code = 404
    code = "model_not_found"


class OperationNotSupported(LatentServeError):
    status_code = 422
    code = "operation_not_supported"


class Overloaded(LatentServeError):
    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Overloaded):
    """The request's timeout would pass (or passed) before the model could answer it."""

    code = "deadline_exceeded"


class ModelUnavailable(LatentServeError):
    status_code = 503
    code = "model_unavailable"


class ModelLoadError(LatentServeError):
    status_code = 409  # seen over HTTP only from a reload; the old version keeps serving
    code = "model_load_error"


class ChecksumMismatch(ModelLoadError):
    code = "checksum_mismatch"


class ProviderUnavailable(LatentServeError):
    code = "provider_unavailable"
