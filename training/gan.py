"""DCGAN: a generator G(z) from Gaussian noise and a discriminator D(x) -> logit, trained on the
minimax game with the non-saturating generator loss -log D(G(z)) (Goodfellow et al. 2014), which
gives the generator strong gradients early, when D rejects its samples easily. Conditional when
`num_classes` is set: the one-hot label is concatenated to z, and D is a projection discriminator
(Miyato & Koyama 2018): its logit adds the inner product of a learned class embedding with D's
features, so what D accepts as real depends on the class and the generator is pushed toward each
class's own images. Concatenating the label to D's features before the last linear layer, the
obvious form, only adds a per-class bias to the logit: D then never looks at the label together
with the image, and the generator may ignore it. D never sees a real image under a wrong label,
so its score is not a check that an image matches its label (docs/evaluation.md measures this).

With `pack` > 1 (PacGAN, Lin et al., NeurIPS 2018) D judges packs of that many images stacked
as channels, all real or all generated: a generator that draws some modes too often and others
too rarely makes packs whose joint statistics differ from real packs, so D can punish mode
imbalance, which it cannot see one image at a time.

With `clusters` = K (a self-conditioned GAN, after Liu et al., CVPR 2020) an unconditional GAN
is trained as a conditional one on K k-means clusters of the training images instead of labels,
and samples a cluster with its share of the training data before drawing from it. The
generator then cannot favour some modes of the data over others at the level of clusters: how
often each part of the data is drawn is fixed by the data, not by the game. No labels are used.
The served graphs keep the unconditional interface: the generator takes one more latent
coordinate, u ~ N(0, 1), and picks the cluster whose share of the cumulative distribution holds
Phi(u); the discriminator assigns an image to its nearest centroid itself."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from training.config import ModelConfig, TrainConfig, to_dict
from training.data import Splits, load_dataset
from training.losses import seed_everything
from training.progress import batch_bar, epoch_bar


class Generator(nn.Module):
    """(B, latent) [+ one-hot] -> (B, 1, 28, 28) logits (the exported graph adds the sigmoid)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.input_shape
        ch = cfg.hidden[0] if cfg.hidden else 64
        self.grid = (2 * ch, h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent_dim + cfg.conditions, math.prod(self.grid)),
            nn.BatchNorm1d(math.prod(self.grid)),
            nn.ReLU(),
        )
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * ch, ch, 4, 2, 1),  # (B, ch, H/2, W/2)
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.ConvTranspose2d(ch, c, 4, 2, 1),  # (B, c, H, W)
        )

    def forward(self, z: Tensor, onehot: Tensor | None = None) -> Tensor:
        if onehot is not None:
            z = torch.cat([z, onehot], dim=1)
        logits: Tensor = self.deconv(self.fc(z).view(-1, *self.grid))
        return logits


class Discriminator(nn.Module):
    """(B, 1, 28, 28) in [0, 1] [+ one-hot] -> (B / pack, 1) logit of 'real' (of the given
    class)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.input_shape
        ch = cfg.hidden[0] if cfg.hidden else 64
        self.pack = cfg.pack
        self.conv = nn.Sequential(
            nn.Conv2d(c * cfg.pack, ch, 4, 2, 1),  # (B / pack, ch, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(ch, 2 * ch, 4, 2, 1),  # (B, 2ch, H/4, W/4)
            nn.BatchNorm2d(2 * ch),
            nn.LeakyReLU(0.2),
        )
        features = 2 * ch * (h // 4) * (w // 4)
        self.head = nn.Linear(features, 1)
        self.class_embedding = (
            nn.Linear(cfg.conditions, features, bias=False) if cfg.conditions else None
        )

    def forward(self, x: Tensor, onehot: Tensor | None = None) -> Tensor:
        """One logit per pack of `pack` consecutive images (B must be a multiple of pack)."""
        if self.pack > 1:
            x = x.reshape(-1, self.pack * x.shape[1], *x.shape[2:])
        h = self.conv(x).flatten(1)
        logit: Tensor = self.head(h)
        if self.class_embedding is not None:
            if onehot is None:
                raise ValueError("conditional discriminator needs labels")
            logit = logit + (self.class_embedding(onehot) * h).sum(dim=1, keepdim=True)
        return logit


def packing_problem(
    kind: str, pack: int, clusters: int, batch_size: int | None = None
) -> tuple[str, str] | None:
    """(option, why) where `pack` or `clusters` cannot apply, else None: the one rule the CLI
    and the model both check. A pack must be all real or all generated images of one condition,
    so packing needs an unconditional GAN without clusters; clusters stand in for labels."""
    if pack > 1 and kind != "gan":
        return "--pack", "packing is for unconditional GANs (--model gan)"
    if clusters and kind != "gan":
        return "--clusters", "clusters stand in for labels in an unconditional GAN (--model gan)"
    if clusters and pack > 1:
        return "--clusters", "a pack would mix clusters: choose one"
    if batch_size is not None and batch_size % pack:
        return "--pack", f"--batch-size {batch_size} is not a multiple of --pack {pack}"
    return None


class GAN(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        problem = packing_problem(cfg.kind, cfg.pack, cfg.clusters)
        if problem is not None:
            raise ValueError(problem[1])
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.discriminator = Discriminator(cfg)
        # k-means centroids (flattened images) and each cluster's share of the training data,
        # set by train_gan; buffers, so they travel in the checkpoint and into the export (only
        # where clusters are used, so earlier checkpoints load as they were saved)
        self.centroids: Tensor
        self.cluster_shares: Tensor
        if cfg.clusters:
            k = cfg.clusters
            self.register_buffer("centroids", torch.zeros(k, math.prod(cfg.input_shape)))
            self.register_buffer("cluster_shares", torch.full((k,), 1.0 / k))

    def onehot(self, y: Tensor | None) -> Tensor | None:
        """One-hot labels, or cluster ids while training a self-conditioned GAN."""
        if not self.cfg.conditions:
            return None
        if y is None:
            if self.cfg.num_classes is not None:
                raise ValueError("conditional model needs labels")
            return None  # self-conditioned: generate() and discriminate() find the cluster
        return F.one_hot(y, self.cfg.conditions).float()

    def nearest_cluster(self, x: Tensor) -> Tensor:
        """(B, *shape) -> (B, K) one-hot of the nearest centroid (a comparison with arange,
        not one_hot, so it exports to ONNX)."""
        nearest = nearest_centroid(x.flatten(1), self.centroids).unsqueeze(1)
        return (nearest == torch.arange(self.cfg.clusters, device=x.device)).float()

    def generate(self, z: Tensor, onehot: Tensor | None = None) -> Tensor:
        """Images in [0, 1] from the served z (see ModelConfig.served_latent_dim)."""
        if self.cfg.clusters:
            return torch.sigmoid(self.generator(z[:, :-1], self.cluster_of_normal(z[:, -1])))
        return torch.sigmoid(self.generator(z, onehot))

    def discriminate(self, x: Tensor, onehot: Tensor | None = None) -> Tensor:
        """(B, *shape) -> (B, 1) logit per image, as served: an image's cluster is its
        nearest centroid, and a packing discriminator sees a pack of the image's copies."""
        if self.cfg.clusters:
            onehot = self.nearest_cluster(x)
        if self.cfg.pack > 1:
            x = x.repeat_interleave(self.cfg.pack, dim=0)
        logit: Tensor = self.discriminator(x, onehot)
        return logit

    def cluster_of_normal(self, u: Tensor) -> Tensor:
        """(B,) standard normal draws -> (B, K) one-hot of the cluster that Phi(u) falls in,
        cluster k with probability cluster_shares[k]. Comparisons, not searchsorted: they export
        to any ONNX opset."""
        p = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
        upper = torch.cumsum(self.cluster_shares, 0)
        upper = torch.cat([upper[:-1], torch.ones_like(upper[-1:]) + 1])  # rounding: last takes all
        lower = torch.cat([torch.zeros_like(upper[:1]), upper[:-1]])
        p = p.unsqueeze(1)
        return ((p >= lower) & (p < upper)).float()

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        return self.generate(torch.randn(n, self.cfg.served_latent_dim), self.onehot(y))


def nearest_centroid(flat: Tensor, centroids: Tensor) -> Tensor:
    """(B, D), (K, D) -> (B,) index of the nearest centroid by squared Euclidean distance, in
    the form that exports to ONNX (training assigns clusters with it too, so training and
    serving break ties alike)."""
    d = (flat * flat).sum(1, keepdim=True) - 2 * flat @ centroids.T
    return (d + (centroids * centroids).sum(1)).argmin(1)


def fit_clusters(
    x: Tensor, k: int, seed: int, sample: int = 20000
) -> tuple[Tensor, Tensor, Tensor]:
    """k-means centroids fitted on up to `sample` images, then every image's nearest
    centroid and each cluster's share of the data: (centroids (k, D), assignment (N,), shares)."""
    from sklearn.cluster import KMeans

    flat = x.flatten(1).cpu().numpy()
    pick = torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed))[:sample]
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(flat[pick.numpy()])
    centroids = torch.from_numpy(km.cluster_centers_).float()
    assigned = torch.cat(
        [
            nearest_centroid(x[i : i + 4096].flatten(1).cpu(), centroids)
            for i in range(0, len(x), 4096)
        ]
    )
    shares = torch.bincount(assigned, minlength=k).float() / len(assigned)
    return centroids, assigned, shares


def discriminator_loss(real_logit: Tensor, fake_logit: Tensor) -> Tensor:
    """-[log D(x) + log(1 - D(G(z)))]: D's side of the minimax game."""
    return F.binary_cross_entropy_with_logits(
        real_logit, torch.ones_like(real_logit)
    ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))


def generator_loss(fake_logit: Tensor) -> Tensor:
    """Non-saturating: -log D(G(z)) instead of log(1 - D(G(z)))."""
    return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))


def train_gan(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: Path,
    splits: Splits | None = None,
    progress: bool = True,
) -> Path:
    """Alternate one D step and one G step per batch; checkpoint after every epoch."""
    problem = packing_problem(
        model_cfg.kind, model_cfg.pack, model_cfg.clusters, train_cfg.batch_size
    )
    if problem is not None:
        raise ValueError(problem[1])
    seed_everything(train_cfg.seed)
    if splits is None:
        splits = load_dataset(
            train_cfg.dataset, train_cfg.data_dir, seed=train_cfg.seed, flat=False
        )
    device = torch.device(train_cfg.device)
    gan = GAN(model_cfg).to(device)
    opt_g = torch.optim.Adam(gan.generator.parameters(), lr=train_cfg.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(gan.discriminator.parameters(), lr=train_cfg.lr, betas=(0.5, 0.999))
    x_all = torch.from_numpy(splits.train.x).to(device)  # MNIST: 188 MB, once
    y_all = torch.from_numpy(splits.train.y).to(device)
    if model_cfg.clusters:  # self-conditioned: cluster ids take the place of labels
        centroids, assigned, shares = fit_clusters(x_all, model_cfg.clusters, train_cfg.seed)
        gan.centroids.copy_(centroids)
        gan.cluster_shares.copy_(shares)
        y_all = assigned.to(device)
    g = torch.Generator().manual_seed(train_cfg.seed)
    metrics: dict[str, float] = {}
    path = out_dir / "checkpoint.pt"
    out_dir.mkdir(parents=True, exist_ok=True)
    bar = epoch_bar(0, train_cfg.epochs, progress)
    for epoch in bar:
        gan.train()
        order = torch.randperm(len(x_all), generator=g)
        d_sum = g_sum = 0.0
        n = 0
        starts = range(0, len(order) - train_cfg.batch_size + 1, train_cfg.batch_size)
        batches = batch_bar(starts, epoch, train_cfg.epochs, progress)
        started = time.perf_counter()
        for i in batches:
            idx = order[i : i + train_cfg.batch_size].to(device)
            x, y = x_all[idx], y_all[idx]
            c = gan.onehot(y)
            z = torch.randn(len(x), model_cfg.latent_dim, device=device)
            fake = torch.sigmoid(gan.generator(z, c))
            d_loss = discriminator_loss(
                gan.discriminator(x, c), gan.discriminator(fake.detach(), c)
            )
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()  # type: ignore[no-untyped-call]
            opt_d.step()
            g_loss = generator_loss(gan.discriminator(fake, c))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()  # type: ignore[no-untyped-call]
            opt_g.step()
            d_value, g_value = d_loss.item(), g_loss.item()
            d_sum += d_value
            g_sum += g_value
            n += 1
            batches.set_postfix(d_loss=f"{d_value:.3f}", g_loss=f"{g_value:.3f}", refresh=False)
        metrics = {
            "d_loss": d_sum / max(n, 1),
            "g_loss": g_sum / max(n, 1),
            "epoch_s": time.perf_counter() - started,  # each step's .item() waited for the device
        }
        bar.set_postfix(d_loss=f"{metrics['d_loss']:.3f}", g_loss=f"{metrics['g_loss']:.3f}")
        state: dict[str, Any] = {
            "model_config": to_dict(model_cfg),
            "train_config": to_dict(train_cfg),
            "state_dict": {k: v.detach().cpu() for k, v in gan.state_dict().items()},
            "optimizer": {"generator": opt_g.state_dict(), "discriminator": opt_d.state_dict()},
            "epoch": epoch + 1,
            "metrics": metrics,
        }
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    return path
