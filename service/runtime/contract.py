"""A model's data contract, from its manifest: what its inputs, latents and labels must look
like, and the map between the units clients use and the model's own values.

Every check names the request field at fault, so every front door reports the same errors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from service.errors import InvalidInput
from service.manifest import Manifest

F32 = NDArray[np.float32]
Labels = NDArray[np.int64]
_RANGE_SLACK = 1e-6


class InputContract:
    def __init__(self, manifest: Manifest) -> None:
        self.name = manifest.name
        self.shape = tuple(manifest.input.shape)
        self.value_range = manifest.input.value_range
        self.latent_dim = manifest.latent_dim
        self.num_classes = manifest.num_classes
        norm = manifest.input.normalization
        self._offset: F32 | None = None
        self._scale: F32 | None = None
        if norm is not None:
            self._offset = np.asarray(norm.offset, dtype=np.float32).reshape(self.shape)
            self._scale = np.asarray(norm.scale, dtype=np.float32).reshape(self.shape)

    # -- checks --------------------------------------------------------------------------------
    def inputs(self, x: NDArray[np.generic], field: str = "inputs") -> F32:
        """A batch [n, *shape] (or one example of `shape`) of finite values the model accepts."""
        shape = self.shape
        if x.ndim == len(shape) and tuple(x.shape) == shape:
            x = x[None]
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise InvalidInput(
                f"expected examples of shape {list(shape)} (a batch of them has shape "
                f"[n, {', '.join(map(str, shape))}]), got shape {list(x.shape)}",
                field=field,
            )
        if x.shape[0] == 0:
            raise InvalidInput("at least one example is required", field=field)
        x32: F32 = np.asarray(x, dtype=np.float32)
        if not np.isfinite(x32).all():
            raise InvalidInput("values must be finite numbers (no NaN or infinity)", field=field)
        lo, hi = self.value_range
        if self._offset is not None:
            with np.errstate(over="ignore"):
                if not np.isfinite(self.to_model(x32)).all():
                    raise InvalidInput(
                        "values are too large for this model's feature scaling", field=field
                    )
        elif x32.min() < lo - _RANGE_SLACK or x32.max() > hi + _RANGE_SLACK:
            raise InvalidInput(
                f"values must lie in the model's range [{lo}, {hi}], got [{x32.min():.4g}, "
                f"{x32.max():.4g}]",
                field=field,
            )
        return x32

    def latents(self, z: NDArray[np.generic], field: str = "z") -> F32:
        d = self.latent_dim
        if z.ndim == 1 and z.shape[0] == d:
            z = z[None]
        if z.ndim != 2 or z.shape[1] != d or z.shape[0] == 0:
            raise InvalidInput(
                f"expected latents of shape [n, {d}], got shape {list(z.shape)}", field=field
            )
        z32: F32 = np.asarray(z, dtype=np.float32)
        if not np.isfinite(z32).all():
            raise InvalidInput("values must be finite numbers (no NaN or infinity)", field=field)
        return z32

    def labels(
        self, labels: NDArray[np.int64] | None, n: int, field: str = "labels"
    ) -> Labels | None:
        """One class label per example for conditional models (one label is repeated); none
        for the others."""
        k = self.num_classes
        if k is None:
            if labels is not None:
                raise InvalidInput(f"model {self.name} is not conditional", field=field)
            return None
        if labels is None:
            raise InvalidInput(f"model {self.name} is conditional: give {n} labels", field=field)
        if labels.shape == (1,) and n > 1:
            labels = np.repeat(labels, n)
        if labels.shape != (n,):
            raise InvalidInput(f"expected {n} labels, got shape {list(labels.shape)}", field=field)
        if labels.min() < 0 or labels.max() >= k:
            raise InvalidInput(f"labels must be integers in [0, {k - 1}]", field=field)
        return labels.astype(np.int64, copy=False)

    # -- units ---------------------------------------------------------------------------------
    # Operations take and return the units clients use. Models with `input.normalization`
    # (tabular data) compute on min-max scaled values; without it every map is the identity.
    def to_model(self, x: F32) -> F32:
        if self._offset is None or self._scale is None:
            return x
        return ((x - self._offset) / self._scale).astype(np.float32)

    def to_raw(self, x: F32) -> F32:
        if self._offset is None or self._scale is None:
            return x
        return (self._offset + self._scale * x).astype(np.float32)

    def feed(self, x_model: F32) -> F32:
        """Model-unit inputs as the graphs saw them in training: inside the value range."""
        if self._offset is None:
            return x_model
        lo, hi = self.value_range
        return np.clip(x_model, lo, hi).astype(np.float32)
