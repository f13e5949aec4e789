"""Training -> export -> calibration -> serving, on tiny models trained on sklearn digits."""

from __future__ import annotations

import io
import json
import logging
import math
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from service.manifest import Manifest
from training import progress
from training.calibrate import load_exported, score
from training.card import record_metrics, reproduce_commands, write_card
from training.config import ModelConfig, TrainConfig
from training.data import load_digits
from training.export import export_checkpoint, quiet_exporter
from training.gan import train_gan
from training.idx import read_idx
from training.losses import kl_to_standard_normal, reconstruction_nll
from training.models import VAE
from training.train import load_checkpoint, train

pytestmark = pytest.mark.slow


def test_kl_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    mean, log_var = torch.randn(1, 3), torch.randn(1, 3) * 0.5
    z = VAE.reparametrize(mean.expand(200000, 3), log_var.expand(200000, 3))
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(1).mean()
    assert abs(kl_to_standard_normal(mean, log_var).item() - mc.item()) < 0.02


def test_reparametrization_is_differentiable() -> None:
    mean = torch.zeros(4, 2, requires_grad=True)
    log_var = torch.zeros(4, 2, requires_grad=True)
    VAE.reparametrize(mean, log_var).sum().backward()
    assert mean.grad is not None and log_var.grad is not None
    assert torch.all(mean.grad == 1)


def test_reconstruction_nll_is_bernoulli() -> None:
    logits = torch.tensor([[0.0, 2.0]])
    x = torch.tensor([[1.0, 0.0]])
    expected = -(np.log(0.5) + np.log(1 - 1 / (1 + np.exp(-2.0))))
    assert abs(reconstruction_nll(logits, x).item() - expected) < 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("run")
    splits = load_digits(seed=0)
    cfg = ModelConfig(
        kind="vae", input_shape=(64,), image_shape=(1, 8, 8), latent_dim=4, hidden=(64,)
    )
    ckpt = train(cfg, TrainConfig(epochs=8, seed=0), run, splits=splits, progress=False)
    return run, ckpt


def test_training_lowers_the_loss_and_checkpoints_carry_config(trained) -> None:
    run, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.epoch == 8 and ckpt.model_config.latent_dim == 4
    assert ckpt.metrics["val_loss"] < 40  # untrained ~ 64 * ln 2 = 44 nats
    assert ckpt.optimizer_state is not None


def test_an_epoch_of_sliced_batches_holds_every_row_once_in_a_seeded_order() -> None:
    from training.train import _shuffled_batches

    x = torch.arange(10, dtype=torch.float32)[:, None]
    y = torch.arange(10)
    batches = list(_shuffled_batches(x, y, 4, seed=1))
    assert [len(b) for b, _ in batches] == [4, 4, 2]  # the last batch is short, not dropped
    rows = torch.cat([b for b, _ in batches])[:, 0].long()
    assert sorted(rows.tolist()) == list(range(10)) and rows.tolist() != list(range(10))
    assert torch.equal(torch.cat([lab for _, lab in batches]), rows)  # labels stay with rows
    again = torch.cat([b for b, _ in _shuffled_batches(x, y, 4, seed=1)])[:, 0].long()
    other = torch.cat([b for b, _ in _shuffled_batches(x, y, 4, seed=2)])[:, 0].long()
    assert torch.equal(again, rows) and not torch.equal(other, rows)


def test_a_training_set_too_large_for_the_device_stays_in_host_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import training.train as training_loop

    monkeypatch.setattr(training_loop, "RESIDENT_BYTES", 0)
    cfg = ModelConfig(kind="vae", latent_dim=2, hidden=(16,))
    path = train(cfg, TrainConfig(epochs=1, seed=3), tmp_path, splits=load_digits(seed=0))
    assert np.isfinite(load_checkpoint(path).metrics["val_loss"])


def test_training_is_deterministic_and_resumes(tmp_path: Path) -> None:
    splits = load_digits(seed=0)
    cfg = ModelConfig(kind="vae", latent_dim=2, hidden=(16,))
    a = train(cfg, TrainConfig(epochs=2, seed=3), tmp_path / "a", splits=splits, progress=False)
    b = train(cfg, TrainConfig(epochs=2, seed=3), tmp_path / "b", splits=splits, progress=False)
    wa, wb = load_checkpoint(a).model.state_dict(), load_checkpoint(b).model.state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    resumed = train(
        cfg,
        TrainConfig(epochs=3, seed=3),
        tmp_path / "a",
        splits=splits,
        resume=True,
        progress=False,
    )
    ckpt = load_checkpoint(resumed)
    assert ckpt.epoch == 3
    assert ckpt.history == [{"to_epoch": 3, "lr": TrainConfig().lr}]  # same lr: one phase
    annealed = train(
        cfg,
        TrainConfig(epochs=4, seed=3, lr=1e-4),
        tmp_path / "a",
        splits=splits,
        resume=True,
        progress=False,
    )
    ckpt = load_checkpoint(annealed)
    assert ckpt.history == [{"to_epoch": 3, "lr": TrainConfig().lr}, {"to_epoch": 4, "lr": 1e-4}]
    commands = reproduce_commands(ckpt, Path("models/x"))
    assert len(commands) == 3 and "--epochs 4" in commands[1] and "--lr 0.0001" in commands[1]
    assert commands[1].endswith("--resume") and not commands[0].endswith("--resume")


def test_export_matches_pytorch_and_serves(trained, tmp_path: Path) -> None:
    _, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    folder = tmp_path / "tiny-vae"
    manifest = export_checkpoint(ckpt, folder, "tiny-vae")
    assert (folder / "encoder.onnx").exists() and (folder / "decoder.onnx").exists()
    assert Manifest.load(folder).model_dump(mode="json") == manifest.model_dump(mode="json")
    assert manifest.training["phases"] == [{"to_epoch": 8, "lr": TrainConfig().lr}]
    model = load_exported(folder)
    x = load_digits(seed=0).test.x[:50]
    import asyncio

    mean, log_var = asyncio.run(model.encode(x))
    with torch.no_grad():
        t_mean, t_log_var = ckpt.model.encoder(torch.from_numpy(x))
    np.testing.assert_allclose(mean, t_mean.numpy(), atol=1e-4)
    np.testing.assert_allclose(log_var, t_log_var.numpy(), atol=1e-4)


def test_calibration_threshold_is_the_heldout_percentile(trained, tmp_path: Path) -> None:
    from training.calibrate import calibrate

    _, ckpt_path = trained
    folder = tmp_path / "tiny-vae"
    export_checkpoint(load_checkpoint(ckpt_path), folder, "tiny-vae")
    val = load_digits(seed=0).val
    manifest = calibrate(folder, val, "digits val", percentile=90.0)
    cal = manifest.calibration["reconstruction"]
    scores = score(load_exported(folder), val.x, "reconstruction")
    assert cal.n == len(val)
    assert abs(np.mean(scores > cal.threshold) - 0.10) < 0.02
    on_disk = json.loads((folder / "model.json").read_text())
    assert on_disk["calibration"]["elbo"]["percentile"] == 90.0


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    import gzip
    import struct

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", 2, 3, 4) + images.tobytes()
    (tmp_path / "a").write_bytes(raw)
    with gzip.open(tmp_path / "a.gz", "wb") as f:
        f.write(raw)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), images)
    (tmp_path / "bad").write_bytes(raw[:-1])
    with pytest.raises(ValueError):
        read_idx(tmp_path / "bad")


def test_evaluation_figures_are_recorded_in_manifest_and_card(trained, tmp_path: Path) -> None:
    _, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    folder = tmp_path / "tiny-vae"
    export_checkpoint(ckpt, folder, "tiny-vae")
    write_card(folder, Manifest.load(folder), reproduce=reproduce_commands(ckpt, folder))
    record_metrics(folder, {"iwae_nll_nats": 21.5, "test_images": 360.0})
    manifest = Manifest.load(folder)
    assert manifest.metrics["iwae_nll_nats"] == 21.5
    assert "val_loss" in manifest.metrics  # training figures kept
    card = (folder / "README.md").read_text()
    assert "| iwae_nll_nats | 21.5 |" in card and "| test_images | 360 |" in card
    assert card.index("## Metrics") < card.index("| iwae_nll_nats") < card.index("## Anomaly")
    assert card.count("| metric | value |") == 1


def test_export_prints_no_exporter_notices(trained, tmp_path: Path) -> None:
    """`python -m training export` prints its own lines only: none of torch.onnx's step-by-step
    lines, skipped-torchvision warnings or LeafSpec FutureWarnings (8 + 4 + 1 per part before)."""
    _, ckpt_path = trained
    folder = tmp_path / "tiny"
    out = subprocess.run(
        [sys.executable, "-m", "training", "export", str(ckpt_path), "--out", str(folder)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"exported tiny to {folder}\n"
    lines = out.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == ["INFO training.export"] * 2, out.stderr
    assert lines[0].startswith(f"INFO training.export: exported {folder / 'encoder.onnx'}: max")


def test_quiet_exporter_drops_only_the_two_notices() -> None:
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    registry.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with quiet_exporter():
                registry.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
                registry.warning("some other registry problem")
                leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use ..."
                warnings.warn(leaf, FutureWarning, stacklevel=1)
                warnings.warn("another deprecation", FutureWarning, stacklevel=1)
            registry.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
    finally:
        registry.removeHandler(handler)
    assert seen == [
        "some other registry problem",
        "torchvision is not installed. Skipping torchvision::nms",  # outside the export
    ]
    assert [str(w.message) for w in caught] == ["another deprecation"]
    assert registry.filters == []


RATE = r"(?:batch/s|s/batch)"  # tqdm turns the rate over below one batch a second


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _bars(monkeypatch: pytest.MonkeyPatch, terminal: bool) -> io.StringIO:
    """Capture what training draws on stderr, redrawn on every step (not at most ten times a
    second, which on a fast machine may skip every batch of a tiny epoch)."""
    screen = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    monkeypatch.setattr(progress, "REDRAW_S", 0.0)
    return screen


def test_training_shows_each_batch_in_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    splits = load_digits(seed=0)
    n = math.ceil(len(splits.train) / 256)
    cfg = ModelConfig(kind="vae", latent_dim=2, hidden=(16,))
    screen = _bars(monkeypatch, terminal=True)
    train(cfg, TrainConfig(epochs=2, batch_size=256), tmp_path / "a", splits=splits)
    text = screen.getvalue()
    for epoch in (1, 2):
        bar = rf"epoch {epoch}/2: 100%\|.*\| {n}/{n} \[[^]]*{RATE}, loss=\d+\.\d\d\]"
        assert re.search(bar, text), text
    assert re.search(r"epochs: 100%\|.*\| 2/2 .*train_loss=\d+\.\d\d, val_loss=\d+\.\d\d\]", text)

    # Redirected to a file or pipe, only the epoch bar and its summary are written.
    piped = _bars(monkeypatch, terminal=False)
    train(cfg, TrainConfig(epochs=1, batch_size=256), tmp_path / "b", splits=splits)
    assert "batch" not in piped.getvalue()
    assert re.search(r"epochs: 100%\|.*\| 1/1 .*val_loss=", piped.getvalue())


def test_gan_training_shows_each_batch_in_a_terminal(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    splits = load_digits(seed=0, flat=False)
    n = len(splits.train) // 256  # the last, partial batch is dropped
    cfg = ModelConfig(
        kind="gan", arch="conv", input_shape=(1, 8, 8), image_shape=(1, 8, 8), latent_dim=2,
        hidden=(4,),
    )  # fmt: skip
    screen = _bars(monkeypatch, terminal=True)
    train_gan(cfg, TrainConfig(epochs=1, batch_size=256), tmp_path, splits=splits)
    text = screen.getvalue()
    bar = rf"epoch 1/1: 100%\|.*\| {n}/{n} \[[^]]*{RATE}, d_loss=\d\.\d+, g_loss=\d\.\d+\]"
    assert re.search(bar, text), text
    assert re.search(r"epochs: 100%\|.*\| 1/1 .*d_loss=\d\.\d+, g_loss=\d\.\d+\]", text)


def test_iwae_objective_is_the_served_iwae_bound(trained, tmp_path: Path) -> None:
    """The training objective with k samples is the bound the service reports as `iwae`: with
    many samples both estimate the same log p(x), and more samples give a tighter bound."""
    import asyncio

    from service.capabilities import ScoreMethod
    from training.losses import iwae_loss
    from training.train import binarized

    _, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    folder = tmp_path / "tiny-vae"
    export_checkpoint(ckpt, folder, "tiny-vae")
    test = binarized(load_digits(seed=0).test, seed=1).x
    x = test[:40]
    served = asyncio.run(
        load_exported(folder).anomaly_scores(x, ScoreMethod.IWAE, k=4000, seed=0)
    ).scores

    def bound(k: int, x: np.ndarray) -> float:
        torch.manual_seed(0)
        with torch.no_grad():
            x_t = torch.from_numpy(x)
            logits, z, mean, log_var = ckpt.model.forward_samples(x_t, None, k)
            loss, rec, kl = iwae_loss(logits, x_t, z, mean, log_var)
        assert rec.item() > 0 and kl.item() > 0
        return loss.item()

    assert bound(4000, x) == pytest.approx(float(served.mean()), abs=0.05)
    # on the whole test split, so Monte Carlo noise cannot reorder bounds a few 0.01 nats apart
    b1, b50, b1000 = bound(1, test), bound(50, test), bound(1000, test)
    assert b1 > b50 + 0.2 and b50 > b1000  # the ELBO is the loosest


def test_checkpoint_likelihood_is_the_served_evaluation(trained, tmp_path: Path) -> None:
    """PyTorch's figures from the checkpoint (for GPU runs) estimate what `evaluate` measures
    through the served model: the same images, bounds within Monte Carlo error."""
    from training.evaluate import likelihood_metrics
    from training.likelihood import checkpoint_likelihood

    _, ckpt_path = trained
    ckpt = load_checkpoint(ckpt_path)
    folder = tmp_path / "tiny-vae"
    export_checkpoint(ckpt, folder, "tiny-vae")
    test = load_digits(seed=0).test
    served = likelihood_metrics(load_exported(folder), test, k=2000, n=60)
    ours = checkpoint_likelihood(ckpt.model, test, k=2000, n=60)
    assert ours["test_images"] == served["test_images"] == 60
    assert ours["iwae_nll_nats"] == pytest.approx(served["iwae_nll_nats"], abs=0.05)
    assert ours["iwae_nll_stderr"] == pytest.approx(served["iwae_nll_stderr"], rel=0.05)
    # one draw per image for the ELBO's reconstruction term: agreement within its noise
    assert ours["neg_elbo_nats"] == pytest.approx(served["neg_elbo_nats"], abs=1.0)
    assert ours["neg_elbo_nats"] > ours["iwae_nll_nats"] + 0.2


def test_iwae_training_runs_and_is_replayed_by_the_card(tmp_path: Path) -> None:
    splits = load_digits(seed=0)
    cfg = ModelConfig(kind="vae", latent_dim=2, hidden=(16,))
    config = TrainConfig(epochs=2, seed=3, importance_samples=5)
    ckpt = load_checkpoint(train(cfg, config, tmp_path / "iwae", splits=splits, progress=False))
    assert ckpt.train_config.importance_samples == 5
    assert math.isfinite(ckpt.metrics["val_loss"])
    (command,) = [c for c in reproduce_commands(ckpt, Path("models/x")) if " train " in c]
    assert "--importance-samples 5 " in command
    elbo = load_checkpoint(
        train(cfg, TrainConfig(epochs=2, seed=3), tmp_path / "elbo", splits=splits, progress=False)
    )
    assert "--importance-samples" not in " ".join(reproduce_commands(elbo, Path("models/x")))
    # ELBO first, then resumed on the IWAE bound: two phases, each replayed with its objective
    tuned = load_checkpoint(
        train(
            cfg,
            TrainConfig(epochs=3, seed=3, importance_samples=5),
            tmp_path / "elbo",
            splits=splits,
            resume=True,
            progress=False,
        )
    )
    lr = TrainConfig().lr
    assert tuned.history == [
        {"to_epoch": 2, "lr": lr},
        {"to_epoch": 3, "lr": lr, "importance_samples": 5},
    ]
    first, then = [c for c in reproduce_commands(tuned, Path("models/x")) if " train " in c]
    assert "--importance-samples" not in first and "--epochs 2 " in first
    assert "--importance-samples 5 " in then and then.endswith("--resume")
    for bad in (ModelConfig(kind="vae", beta=2.0), ModelConfig(kind="ae")):
        with pytest.raises(ValueError, match="beta 1"):
            train(bad, config, tmp_path / "bad", splits=splits, progress=False)
