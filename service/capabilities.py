"""What a model can do, derived from its manifest: the one answer to "what can model X do?".

The routes, `/models`, calibration, evaluation and the training CLI all ask `Capabilities.of`,
so no two places can disagree about which operations or score methods a model serves.

| parts present                 | operations                                          |
| ----------------------------- | --------------------------------------------------- |
| decoder or generator          | sample, decode, interpolate (between latents)       |
| encoder (with a decoder)      | encode, reconstruct, interpolate (between inputs), anomaly-score |
| discriminator                 | anomaly-score                                       |

| score method    | needs                                                             |
| --------------- | ----------------------------------------------------------------- |
| reconstruction  | an encoder and a decoder                                          |
| elbo, iwae      | a VAE or CVAE (probabilistic encoder) with a Bernoulli decoder     |
| elbo-complexity | elbo, on image inputs (the correction compresses them as PNG)     |
| discriminator   | a discriminator (GANs)                                            |
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.errors import OperationNotSupported
from service.manifest import Manifest, ModelKind, PartRole


class Operation(StrEnum):
    """An operation of the data plane; the value is the native route's path."""

    SAMPLE = "sample"
    DECODE = "decode"
    ENCODE = "encode"
    RECONSTRUCT = "reconstruct"
    INTERPOLATE = "interpolate"
    ANOMALY_SCORE = "anomaly-score"


class ScoreMethod(StrEnum):
    """An anomaly score; higher is more anomalous."""

    RECONSTRUCTION = "reconstruction"
    ELBO = "elbo"
    IWAE = "iwae"
    ELBO_COMPLEXITY = "elbo-complexity"
    """-ELBO minus the input's complexity (its 1-bit PNG length, in nats): Serra et al. 2020. A
    likelihood rewards simple inputs (a 1 has less ink than an 8, so a model of 8s finds 1s
    likely); subtracting what a generic compressor needs for the input leaves what this model
    explains beyond any model of images."""
    COMBINED = "combined"
    """Reconstruction and elbo-complexity together: the log squared error and elbo-complexity,
    each as a robust z-score on the model's calibration data (minus the median, over the
    interquartile range), summed. Each catches what the other misses: a model of 8s reconstructs
    a 1 well (it can draw one inside an 8) but pays for it in complexity-corrected likelihood;
    a model of 1s gives a complex 7 a low elbo-complexity but cannot reconstruct it. Offered
    where the manifest calibrates both."""
    DISCRIMINATOR = "discriminator"

    @property
    def sampled(self) -> bool:
        """Draws k latents per input (the bound's Monte Carlo estimate), so k and seed matter."""
        return self in (
            ScoreMethod.ELBO,
            ScoreMethod.IWAE,
            ScoreMethod.ELBO_COMPLEXITY,
            ScoreMethod.COMBINED,
        )

    @property
    def likelihood_based(self) -> bool:
        """Built on the decoder's likelihood of the input, so it means what the manifest's
        preprocessing (e.g. binarized inputs) says it means, and nothing for other inputs."""
        return self in (
            ScoreMethod.ELBO,
            ScoreMethod.IWAE,
            ScoreMethod.ELBO_COMPLEXITY,
            ScoreMethod.COMBINED,
        )

    @property
    def per_pixel(self) -> bool:
        """Decomposes over input values, so it can be returned per pixel."""
        return self not in (
            ScoreMethod.DISCRIMINATOR,
            ScoreMethod.ELBO_COMPLEXITY,
            ScoreMethod.COMBINED,
        )


_VARIATIONAL_KINDS = (ModelKind.VAE, ModelKind.CVAE)

Scale = tuple[float, float]


def combined_scales(manifest: Manifest) -> tuple[Scale, Scale] | None:
    """The (median, interquartile range) of log reconstruction error and of elbo-complexity on
    the manifest's calibration data, which the `combined` score standardises by; None where
    either calibration is missing or unusable."""
    rec = manifest.calibration.get(ScoreMethod.RECONSTRUCTION.value)
    cx = manifest.calibration.get(ScoreMethod.ELBO_COMPLEXITY.value)
    if rec is None or cx is None:
        return None
    rec_scale, cx_scale = rec.robust_scale(log=True), cx.robust_scale()
    if rec_scale is None or cx_scale is None:
        return None
    return rec_scale, cx_scale


@dataclass(frozen=True)
class Capabilities:
    name: str
    kind: ModelKind
    operations: tuple[Operation, ...]
    score_methods: tuple[ScoreMethod, ...]
    num_classes: int | None
    image_outputs: bool
    """Outputs are images (`input.image_shape`), so they render as PNG."""

    @classmethod
    def of(cls, manifest: Manifest) -> Capabilities:
        parts = manifest.parts
        generates = PartRole.DECODER in parts or PartRole.GENERATOR in parts
        encodes = PartRole.ENCODER in parts and generates
        ops: list[Operation] = []
        methods: list[ScoreMethod] = []
        if generates:
            ops += [Operation.SAMPLE, Operation.DECODE, Operation.INTERPOLATE]
        if encodes:
            ops += [Operation.ENCODE, Operation.RECONSTRUCT]
            methods.append(ScoreMethod.RECONSTRUCTION)
            if manifest.kind in _VARIATIONAL_KINDS and manifest.likelihood == "bernoulli":
                methods += [ScoreMethod.ELBO, ScoreMethod.IWAE]
                if manifest.input.image_shape is not None:
                    methods.append(ScoreMethod.ELBO_COMPLEXITY)
                    if combined_scales(manifest) is not None:
                        methods.append(ScoreMethod.COMBINED)
        if PartRole.DISCRIMINATOR in parts:
            methods.append(ScoreMethod.DISCRIMINATOR)
        if methods:
            ops.append(Operation.ANOMALY_SCORE)
        return cls(
            name=manifest.name,
            kind=manifest.kind,
            operations=tuple(ops),
            score_methods=tuple(methods),
            num_classes=manifest.num_classes,
            image_outputs=manifest.input.image_shape is not None,
        )

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def supports(self, operation: Operation) -> bool:
        return operation in self.operations

    def require(self, operation: Operation, why: str = "") -> None:
        if operation not in self.operations:
            served = ", ".join(self.operations) or "nothing"
            raise OperationNotSupported(
                f"model {self.name} ({self.kind.value}) cannot {operation.value}{why}; "
                f"it serves: {served}"
            )

    def require_method(self, method: ScoreMethod) -> None:
        if method not in self.score_methods:
            served = ", ".join(self.score_methods) or "none"
            raise OperationNotSupported(
                f"model {self.name} ({self.kind.value}) has no {method.value!r} score; "
                f"its score methods: {served}",
                field="method",
            )
