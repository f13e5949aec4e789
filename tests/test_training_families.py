"""Conv VAE, DCGAN and fp16 copies: trained for a moment on 8x8 digits, exported, served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from service.capabilities import Capabilities, ScoreMethod
from service.manifest import Manifest, PartRole
from training.calibrate import calibrate, load_exported
from training.classifier import predict, train_classifier
from training.config import ModelConfig, TrainConfig
from training.data import load_digits
from training.evaluate import sample_quality
from training.export import add_fp16_copies, export_checkpoint
from training.gan import GAN, discriminator_loss, fit_clusters, generator_loss, train_gan
from training.train import Checkpoint, load_checkpoint, train

pytestmark = pytest.mark.slow


def test_generator_loss_is_non_saturating() -> None:
    # When D confidently rejects fakes (logit -> -inf), log(1 - D) saturates but -log D does not.
    fake = torch.tensor([[-8.0]], requires_grad=True)
    generator_loss(fake).backward()  # type: ignore[no-untyped-call]
    assert fake.grad is not None and fake.grad.abs().item() > 0.99
    assert discriminator_loss(torch.tensor([[10.0]]), torch.tensor([[-10.0]])).item() < 1e-3


@pytest.fixture(scope="module")
def image_digits():
    return load_digits(seed=0, flat=False)


def _tiny_conv_vae(res_blocks: int = 0) -> ModelConfig:
    """A conv VAE small enough for 8x8 digits and seconds of training."""
    return ModelConfig(
        kind="vae",
        arch="conv",
        input_shape=(1, 8, 8),
        image_shape=(1, 8, 8),
        latent_dim=4,
        hidden=(8,),
        res_blocks=res_blocks,
    )


@pytest.fixture(scope="module")
def conv_vae(image_digits, tmp_path_factory: pytest.TempPathFactory):
    """A conv VAE trained briefly on binarized digits, exported with fp16 copies."""
    tmp = tmp_path_factory.mktemp("conv")
    cfg = _tiny_conv_vae()
    ckpt = load_checkpoint(
        train(
            cfg,
            TrainConfig(epochs=3, seed=0, binarize=True),
            tmp / "run",
            splits=image_digits,
            progress=False,
        )
    )
    manifest = export_checkpoint(ckpt, tmp / "conv-vae", "conv-vae", half=True)
    return ckpt, tmp / "conv-vae", manifest


def test_conv_vae_exports_and_matches_torch(image_digits, conv_vae) -> None:
    ckpt, folder, _ = conv_vae
    assert ckpt.train_config.binarize and ckpt.metrics["val_loss"] < 60
    model = load_exported(folder)
    z = torch.randn(16, 4)
    out = asyncio.run(model.decode(z.numpy()))
    with torch.no_grad():
        ref = torch.sigmoid(ckpt.model.decoder(z)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    assert asyncio.run(model.reconstruct(image_digits.test.x[:16])).shape == (16, 1, 8, 8)


def test_residual_conv_vae_trains_exports_matches_torch_and_is_replayed(
    image_digits, tmp_path: Path
) -> None:
    from training.card import reproduce_commands
    from training.likelihood import checkpoint_likelihood
    from training.models import ResidualBlock

    cfg = _tiny_conv_vae(res_blocks=2)
    config = TrainConfig(epochs=2, seed=0, binarize=True, importance_samples=3)
    run = train(cfg, config, tmp_path / "run", splits=image_digits, progress=False)
    ckpt = load_checkpoint(run)
    blocks = [m for m in ckpt.model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 8  # 2 per resolution, 2 resolutions, encoder and decoder
    assert ckpt.model_config.res_blocks == 2 and np.isfinite(ckpt.metrics["val_loss"])
    export_checkpoint(ckpt, tmp_path / "res-vae", "res-vae")
    model = load_exported(tmp_path / "res-vae")
    z = torch.randn(16, 4)
    with torch.no_grad():
        ref = torch.sigmoid(ckpt.model.decoder(z)).numpy()
    np.testing.assert_allclose(asyncio.run(model.decode(z.numpy())), ref, atol=1e-4)
    (command,) = [c for c in reproduce_commands(ckpt, Path("models/x")) if " train " in c]
    assert " --res-blocks 2 " in command and " --importance-samples 3 " in command
    report = checkpoint_likelihood(ckpt.model, image_digits.test, k=50, n=50)
    assert report["test_images"] == 50 and report["iwae_k"] == 50
    assert 0 < report["iwae_nll_nats"] < report["neg_elbo_nats"]


def test_fp16_copy_is_served_within_bound(conv_vae) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from service.runtime.batching import BatchingConfig
    from service.runtime.model import GenerativeModel
    from service.runtime.sessions import SessionConfig

    _, folder, manifest = conv_vae
    assert manifest.parts[PartRole.DECODER].fp16_path == "decoder.fp16.onnx"

    def load(fp16: bool) -> GenerativeModel:
        return GenerativeModel.load(
            folder,
            SessionConfig(providers=("cpu",), prefer_fp16=fp16),
            BatchingConfig(enabled=False),
            ThreadPoolExecutor(1),
        )

    half, full = load(True), load(False)
    assert half.parts[PartRole.DECODER].precision == "fp16"
    z = np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32)
    a, b = asyncio.run(half.decode(z)), asyncio.run(full.decode(z))
    assert a.dtype == np.float32
    assert np.abs(a - b).max() < 5e-3  # outputs in [0, 1]; fp16 keeps ~3 decimal digits


def _tiny_gan(
    image_digits, run: Path, num_classes: int | None = None, pack: int = 1, clusters: int = 0
) -> Checkpoint:
    """A DCGAN (conditional with `num_classes`, judged in packs with `pack`, self-conditioned
    on k-means clusters with `clusters`) trained for two epochs on 8x8 digits."""
    cfg = ModelConfig(
        kind="gan" if num_classes is None else "cgan",
        arch="conv",
        input_shape=(1, 8, 8),
        image_shape=(1, 8, 8),
        latent_dim=8,
        hidden=(8,),
        num_classes=num_classes,
        pack=pack,
        clusters=clusters,
    )
    config = TrainConfig(epochs=2, lr=2e-4, batch_size=64)
    return load_checkpoint(train_gan(cfg, config, run, splits=image_digits, progress=False))


def test_dcgan_trains_exports_and_scores(image_digits, tmp_path: Path) -> None:
    ckpt = _tiny_gan(image_digits, tmp_path / "run")
    assert set(ckpt.metrics) == {"d_loss", "g_loss", "epoch_s"} and ckpt.metrics["epoch_s"] > 0
    folder = tmp_path / "dcgan"
    manifest = export_checkpoint(ckpt, folder, "dcgan")
    assert set(manifest.metrics) == {"d_loss", "g_loss"}  # the epoch's seconds stay behind
    assert set(manifest.parts) == {PartRole.GENERATOR, PartRole.DISCRIMINATOR}
    assert Capabilities.of(manifest).score_methods == (ScoreMethod.DISCRIMINATOR,)
    manifest = calibrate(folder, image_digits.val, "digits val")
    assert Manifest.load(folder).calibration["discriminator"].n == len(image_digits.val)
    model = load_exported(folder)
    x = image_digits.test.x[:10]
    scores = asyncio.run(model.anomaly_scores(x, ScoreMethod.DISCRIMINATOR)).scores
    with torch.no_grad():
        logit = ckpt.model.discriminator(torch.from_numpy(x)).numpy()[:, 0]
    np.testing.assert_allclose(scores, np.logaddexp(0, -logit), rtol=1e-4, atol=1e-5)


def test_a_packing_discriminator_judges_each_pack_as_one() -> None:
    """PacGAN: one logit per pack of consecutive images, moved by every member of its pack and by
    no other pack's images."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="gan", arch="conv", input_shape=(1, 8, 8), image_shape=(1, 8, 8), hidden=(4,), pack=3
    )
    d = GAN(cfg).discriminator.eval()
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        base = d(x)[:, 0]
        assert base.shape == (2,)
        for i in range(6):
            moved = x.clone()
            moved[i] = torch.rand(1, 8, 8)
            changed = (d(moved)[:, 0] - base).abs() > 1e-6
            assert changed.tolist() == [i < 3, i >= 3]
    with pytest.raises(ValueError, match="unconditional"):
        GAN(ModelConfig(kind="cgan", arch="conv", input_shape=(1, 8, 8), num_classes=3, pack=2))


def test_packing_gan_trains_exports_and_scores_one_image_as_a_pack_of_copies(
    image_digits, tmp_path: Path
) -> None:
    ckpt = _tiny_gan(image_digits, tmp_path / "run", pack=4)
    folder = tmp_path / "pacgan"
    manifest = export_checkpoint(ckpt, folder, "pacgan")
    assert manifest.training["model"]["pack"] == 4
    model = load_exported(folder)
    x = image_digits.test.x[:10]
    scores = asyncio.run(model.anomaly_scores(x, ScoreMethod.DISCRIMINATOR)).scores
    assert scores.shape == (10,)  # one score per image, not per pack
    with torch.no_grad():
        copies = torch.from_numpy(x).repeat_interleave(4, dim=0)
        logit = ckpt.model.discriminator(copies).numpy()[:, 0]
    np.testing.assert_allclose(scores, np.logaddexp(0, -logit), rtol=1e-4, atol=1e-5)
    samples, z = asyncio.run(model.sample(8, seed=1))
    with torch.no_grad():
        expected = torch.sigmoid(ckpt.model.generator(torch.from_numpy(z))).numpy()
    np.testing.assert_allclose(samples, expected, atol=1e-4)


def test_cluster_draws_follow_the_cluster_shares() -> None:
    """Phi(u) of a standard normal u is uniform, so cluster k is drawn with its data share; every
    u, however extreme, picks exactly one cluster."""
    cfg = ModelConfig(kind="gan", arch="conv", input_shape=(1, 8, 8), hidden=(4,), clusters=4)
    gan = GAN(cfg)
    gan.cluster_shares.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    u = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    onehot = gan.cluster_of_normal(torch.cat([u, torch.tensor([-40.0, 40.0, 0.0])]))
    assert (onehot.sum(1) == 1).all()
    np.testing.assert_allclose(onehot[:-3].mean(0).numpy(), [0.1, 0.2, 0.3, 0.4], atol=4e-3)
    assert onehot[-3:].argmax(1).tolist() == [0, 3, 2]  # Phi(0) = 0.5 lies in cluster 2


def test_fit_clusters_assigns_each_image_its_nearest_centroid(image_digits) -> None:
    x = torch.from_numpy(image_digits.train.x)
    centroids, assigned, shares = fit_clusters(x, 6, seed=0)
    assert centroids.shape == (6, 64) and shares.sum().item() == pytest.approx(1.0)
    np.testing.assert_array_equal(assigned, torch.cdist(x.flatten(1), centroids).argmin(1))
    np.testing.assert_allclose(shares, np.bincount(assigned, minlength=6) / len(x))
    cfg = ModelConfig(kind="gan", arch="conv", input_shape=(1, 8, 8), hidden=(4,), clusters=6)
    gan = GAN(cfg)
    gan.centroids.copy_(centroids)
    np.testing.assert_array_equal(gan.nearest_cluster(x).argmax(1), assigned)


def test_self_conditioned_gan_is_served_as_an_unconditional_one(
    image_digits, tmp_path: Path
) -> None:
    ckpt = _tiny_gan(image_digits, tmp_path / "run", clusters=5)
    gan = ckpt.model
    _, assigned, shares = fit_clusters(torch.from_numpy(image_digits.train.x), 5, seed=0)
    np.testing.assert_allclose(gan.cluster_shares, shares)  # the data's shares, kept
    folder = tmp_path / "scgan"
    manifest = export_checkpoint(ckpt, folder, "scgan")
    assert not manifest.conditional and manifest.latent_dim == 8 + 1
    assert [s.name for s in manifest.parts[PartRole.DISCRIMINATOR].inputs] == ["x"]
    model = load_exported(folder)
    samples, z = asyncio.run(model.sample(64, seed=2))
    assert z.shape == (64, 9)
    with torch.no_grad():
        expected = gan.generate(torch.from_numpy(z)).numpy()
        by_hand = torch.sigmoid(
            gan.generator(
                torch.from_numpy(z[:, :8]), gan.cluster_of_normal(torch.from_numpy(z[:, 8]))
            )
        ).numpy()
    np.testing.assert_allclose(samples, expected, atol=1e-4)
    np.testing.assert_allclose(expected, by_hand, atol=1e-6)
    x = image_digits.test.x[:10]
    scores = asyncio.run(model.anomaly_scores(x, ScoreMethod.DISCRIMINATOR)).scores
    with torch.no_grad():
        xt = torch.from_numpy(x)
        logit = gan.discriminator(xt, gan.nearest_cluster(xt)).numpy()[:, 0]
    np.testing.assert_allclose(scores, np.logaddexp(0, -logit), rtol=1e-4, atol=1e-5)
    # in fp16 a cluster boundary moves and some z would draw another cluster: both parts stay fp32
    assert all(p.fp16_path is None for p in add_fp16_copies(folder).parts.values())


def test_conditional_discriminator_checks_the_label() -> None:
    """A projection discriminator: how much a label raises the logit depends on the image (a
    label concatenated before the last layer would shift every image's logit alike, so D would
    judge every class's images by one standard)."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        kind="cgan",
        arch="conv",
        input_shape=(1, 8, 8),
        image_shape=(1, 8, 8),
        hidden=(4,),
        num_classes=3,
    )
    gan = GAN(cfg).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        logits = torch.stack(
            [gan.discriminator(x, gan.onehot(torch.full((2,), c))) for c in range(3)]
        )[:, :, 0]  # (class, image)
    gain_0, gain_1 = (logits[1] - logits[0]).tolist()
    assert abs(gain_0 - gain_1) > 1e-3
    with pytest.raises(ValueError, match="labels"):
        gan.discriminator(x)


def test_conditional_gan_trains_exports_and_scores(image_digits, tmp_path: Path) -> None:
    ckpt = _tiny_gan(image_digits, tmp_path / "run", num_classes=10)
    folder = tmp_path / "cdcgan"
    manifest = export_checkpoint(ckpt, folder, "cdcgan")
    assert manifest.conditional and manifest.num_classes == 10
    assert [s.name for s in manifest.parts[PartRole.DISCRIMINATOR].inputs] == ["x", "label"]
    calibrate(folder, image_digits.val, "digits val")
    model = load_exported(folder)
    labels = np.arange(10, dtype=np.int64)
    samples, z = asyncio.run(model.sample(10, seed=3, labels=labels))
    with torch.no_grad():
        expected = torch.sigmoid(
            ckpt.model.generator(torch.from_numpy(z), ckpt.model.onehot(torch.from_numpy(labels)))
        ).numpy()
    np.testing.assert_allclose(samples, expected, atol=1e-4)
    x = image_digits.test.x[:10]
    y = image_digits.test.y[:10].astype(np.int64)
    scores = asyncio.run(model.anomaly_scores(x, ScoreMethod.DISCRIMINATOR, labels=y)).scores
    with torch.no_grad():
        onehot = ckpt.model.onehot(torch.from_numpy(y))
        logit = ckpt.model.discriminator(torch.from_numpy(x), onehot).numpy()[:, 0]
    np.testing.assert_allclose(scores, np.logaddexp(0, -logit), rtol=1e-4, atol=1e-5)
    # the evaluation's sample figures: the mean over labels and the weakest label
    judge = train_classifier(image_digits.train, epochs=1, progress=False)
    quality = sample_quality(folder, judge, image_digits.val, image_digits.test, n=200)
    drawn, _ = asyncio.run(model.sample(200, seed=0, labels=np.arange(200) % 10))
    predicted, _ = predict(judge, drawn)
    per_label = [(predicted[np.arange(200) % 10 == c] == c).mean() for c in range(10)]
    assert quality["conditional_accuracy"] == pytest.approx(np.mean(per_label))
    assert quality["conditional_accuracy_min"] == pytest.approx(min(per_label))
    assert quality["conditional_accuracy_min"] < quality["conditional_accuracy"]
