"""Model cards and the README tell a new user commands that work in a fresh clone: MNIST from the
download cache, the same recipe in the README as in the card, and every resume spelled out."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import MODELS
from training.card import reproduce_commands
from training.config import ModelConfig, TrainConfig
from training.train import Checkpoint

ROOT = MODELS.parent
CARDS = sorted(MODELS.glob("*/README.md"))


def _checkpoint(train_cfg: TrainConfig, history: list[dict[str, float]]) -> Checkpoint:
    model_cfg = ModelConfig(kind="vae", arch="conv", input_shape=(1, 28, 28), latent_dim=32)
    epoch = int(history[-1]["to_epoch"])
    return Checkpoint(model_cfg, train_cfg, None, None, epoch, {}, history)


def test_reproduce_commands_read_mnist_from_the_download_cache() -> None:
    cfg = TrainConfig(dataset="mnist", data_dir="../shared/datasets/mnist", lr=2e-4, epochs=60)
    phases = [{"to_epoch": 50, "lr": 1e-3}, {"to_epoch": 60, "lr": 2e-4}]
    commands = reproduce_commands(_checkpoint(cfg, phases), Path("models/mnist-conv-vae"))
    assert commands[0] == "python -m training download mnist"
    assert not any("--data-dir" in c for c in commands)
    assert [re.findall(r"--(epochs|lr) (\S+)", c) for c in commands[1:3]] == [
        [("epochs", "50"), ("lr", "0.001")],
        [("epochs", "60"), ("lr", "0.0002")],
    ]
    assert commands[2].endswith(" --resume") and not commands[1].endswith(" --resume")
    assert commands[3] == (
        "python -m training export runs/mnist-conv-vae/checkpoint.pt --out models/mnist-conv-vae"
    )


def test_reproduce_commands_keep_a_data_dir_nothing_can_download() -> None:
    cfg = TrainConfig(dataset="images", data_dir="photos", image_shape=(3, 28, 28))
    commands = reproduce_commands(_checkpoint(cfg, [{"to_epoch": 5, "lr": 1e-3}]), Path("m/x"))
    assert len(commands) == 2 and "--data-dir photos --image-size 28x28 --channels 3" in commands[0]


def test_reproduce_commands_replay_packs_and_clusters() -> None:
    model_cfg = ModelConfig(kind="gan", arch="conv", input_shape=(1, 28, 28), pack=4)
    ckpt = Checkpoint(model_cfg, TrainConfig(dataset="mnist"), None, None, 15, {}, [])
    assert " --pack 4 " in reproduce_commands(ckpt, Path("models/g"))[1]
    ckpt.model_config.pack = 1
    assert "--pack" not in reproduce_commands(ckpt, Path("models/g"))[1]
    ckpt.model_config.clusters = 50
    assert " --clusters 50 " in reproduce_commands(ckpt, Path("models/g"))[1]


def test_reproduce_commands_replay_the_export_options() -> None:
    ckpt = Checkpoint(ModelConfig(kind="vae"), TrainConfig(), None, None, 5, {}, [])
    plain = reproduce_commands(ckpt, Path("models/x"), "x")[-1]
    assert plain == "python -m training export runs/x/checkpoint.pt --out models/x"
    export = reproduce_commands(ckpt, Path("models/x"), "y", "2", "It's a VAE")[-1]
    assert export.endswith(" --name y --version 2 --description 'It'\"'\"'s a VAE'")


def _commands(markdown: str) -> list[str]:
    """Shell commands in the ```bash blocks of a markdown text, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", markdown, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def _train_commands(markdown: str, run: str) -> list[str]:
    return [
        c
        for c in _commands(markdown)
        if c.startswith("python -m training train") and f"--out {run}" in c
    ]


def test_the_readme_conv_vae_recipe_is_its_cards() -> None:
    readme = _train_commands((ROOT / "README.md").read_text(), "runs/mnist-conv-vae")
    card = _train_commands((MODELS / "mnist-conv-vae" / "README.md").read_text(), "runs/")
    assert len(card) == 2 and readme == card


@pytest.mark.parametrize(
    "path", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *CARDS]
)
def test_docs_do_not_point_at_a_dataset_folder_a_clone_lacks(path: Path) -> None:
    assert "shared/datasets" not in path.read_text()


@pytest.mark.parametrize("card", CARDS, ids=[c.parent.name for c in CARDS])
def test_each_card_replays_the_recorded_run(card: Path) -> None:
    """The last `train` command of a card ends where model.json says the run ended, and a card
    that speaks of resuming shows the command that does it."""
    text = card.read_text()
    training = json.loads((card.parent / "model.json").read_text())["training"]
    train = _train_commands(text, f"runs/{card.parent.name}")
    last = dict(re.findall(r"--(epochs|lr) (\S+)", train[-1]))
    assert int(last["epochs"]) == training["epochs"] == training["train"]["epochs"]
    assert float(last["lr"]) == training["train"]["lr"]
    if "resume" in text.replace("--resume", ""):
        assert any(c.endswith(" --resume") for c in train)
    if training["train"]["dataset"] == "mnist":
        assert _commands(text)[0] == "python -m training download mnist"
