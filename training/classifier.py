"""A small CNN classifier the package trains itself, used to judge samples: class accuracy of
conditional samples, class balance of unconditional ones, and a Fréchet distance between sample and
real features (the FID recipe with this classifier in place of Inception, since Inception knows
nothing of 28x28 digits and cannot be downloaded here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from scipy import linalg
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from training.data import Split


class SmallCNN(nn.Module):
    """(B, 1, H, W) in [0, 1] -> (B, classes) logits; `features` is the 128-d penultimate layer."""

    def __init__(self, side: int = 28, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, H/4, W/4)
        )
        self.fc = nn.Sequential(nn.Linear(64 * (side // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, classes)
        self.side = side

    def features(self, x: Tensor) -> Tensor:
        out: Tensor = self.fc(self.conv(x.view(-1, 1, self.side, self.side)).flatten(1))
        return out

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.head(self.features(x))
        return logits


def train_classifier(
    train: Split,
    epochs: int = 2,
    seed: int = 0,
    weights: NDArray[np.float64] | None = None,
    progress: bool = True,
) -> SmallCNN:
    """Train on `train`; with `weights`, batches are drawn with those per-example probabilities."""
    torch.manual_seed(seed)
    side = int(round(np.sqrt(train.x[0].size)))
    model = SmallCNN(side)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), disable=not progress, desc="classifier"):
        if weights is None:
            order = torch.randperm(len(x), generator=g)
        else:
            p = torch.from_numpy(weights / weights.sum())
            order = torch.multinomial(p, len(x), replacement=True, generator=g)
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    return model.eval()


def load_or_train(path: Path, train: Split, epochs: int = 2) -> SmallCNN:
    """The evaluation classifier, cached so every evaluation uses the same one."""
    side = int(round(np.sqrt(train.x[0].size)))
    if path.exists():
        model = SmallCNN(side)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model.eval()
    model = train_classifier(train, epochs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


@torch.no_grad()
def predict(
    model: SmallCNN, x: NDArray[np.float32]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Predicted labels and 128-d features, in batches."""
    labels, feats = [], []
    for i in range(0, len(x), 1024):
        f = model.features(torch.from_numpy(np.ascontiguousarray(x[i : i + 1024])))
        labels.append(model.head(f).argmax(1).numpy())
        feats.append(f.double().numpy())
    return np.concatenate(labels), np.concatenate(feats)


def frechet_distance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between two feature clouds."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Dead ReLU features make both covariances singular; like pytorch-fid, a small ridge on the
    # diagonal keeps the matrix square root defined (its effect on the distance is ~1e-6 * dim).
    ridge = np.eye(len(s_a)) * 1e-6
    covmean = np.real(linalg.sqrtm((s_a + ridge) @ (s_b + ridge)))
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean)))


def class_balance(labels: NDArray[np.int64], classes: int = 10) -> dict[str, float]:
    """How evenly samples spread over classes: normalised entropy (1 = uniform) and the
    smallest and largest class share."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    return {
        "class_entropy_norm": float(-(nz * np.log(nz)).sum() / np.log(classes)),
        "class_share_min": float(p.min()),
        "class_share_max": float(p.max()),
    }
