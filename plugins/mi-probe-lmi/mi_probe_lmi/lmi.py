"""Latent MI (LMI; Gowri, Lun, Klein & Yin, NeurIPS 2024): learn a small embedding of
each variable, then run KSG on the embeddings.

The network and loss are LMI's ``AECross`` (``latentmi``; repository
ggdna/latent-mutual-information, ``lmi/models.py``): per variable an encoder
``d -> L -> L/2 -> L/4 -> latent`` and two decoders ``latent -> L/4 -> L/2 -> L -> d``
(LeakyReLU(0.2) after every layer but a decoder's last; the encoder's output too), one
reconstructing the variable from its own code and one from the *other* variable's code.
Loss = ``lam * (MSE(yx(z_y), x) + MSE(xy(z_x), y)) + alpha * (MSE(xx(z_x), x) +
MSE(yy(z_y), y))``: the cross terms make each code keep what predicts the other
variable, the auto terms keep the code of the variable itself. Width ``L`` = 1024, or
the largest power of two <= d when d > 2048 (``latentmi``'s rule). Xavier-uniform
weights, zero biases; Adam (lr 1e-4, eps 1e-7), batches of 512, at most 300 epochs,
stopped after 30 epochs without a lower held-out loss.

The rows are split once (seeded): ``1 - validation_split`` train the network; the
held-out rest decide early stopping and are the only rows KSG sees (``latentmi``'s
``estimate_on_val``), so the estimate is of codes the network was not fitted on. Each
column is standardised over all rows, NaN (constant columns) set to 0, clipped to
[-10, 10], as ``latentmi`` does.

Deliberate differences from ``latentmi`` (each stated in ``describe()``): everything
is seeded (``latentmi`` draws its split and batches from numpy's and torch's global
generators), the network of the best held-out loss is the one used (``latentmi``'s
early stopper keeps a reference to the live ``state_dict``, so it ends with the last
epoch's weights), and MI is in nats (``latentmi`` reports bits).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

#: ``latentmi``'s clip of standardised values
CLIP = 10.0


@dataclass(frozen=True)
class FitConfig:
    """Training settings of one LMI embedding (the plugin's params, validated there)."""

    latent_dim: int = 8
    hidden: int | None = None
    epochs: int = 300
    patience: int = 30
    batch_size: int = 512
    lr: float = 1e-4
    validation_split: float = 0.5
    alpha: float = 1.0
    lam: float = 1.0
    seed: int = 0


def hidden_width(dims: int, hidden: int | None = None) -> int:
    """Width L of the first hidden layer for a variable of ``dims`` dimensions:
    ``hidden`` when given, else ``latentmi``'s 1024, or 2**floor(log2 dims) above 2048."""
    if hidden is not None:
        return hidden
    return 1024 if dims <= 2048 else 2 ** int(math.floor(math.log2(dims)))


def _mlp(sizes: list[int], last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope=0.2))
    return nn.Sequential(*layers)


class PairedAE(nn.Module):
    """LMI's ``AECross``: an autoencoder per variable plus cross decoders."""

    def __init__(self, dx: int, dy: int, latent: int, lx: int, ly: int):
        super().__init__()
        self.x_encoder = _mlp([dx, lx, lx // 2, lx // 4, latent], last_act=True)
        self.y_encoder = _mlp([dy, ly, ly // 2, ly // 4, latent], last_act=True)
        self.xx_decoder = _mlp([latent, lx // 4, lx // 2, lx, dx], last_act=False)
        self.yy_decoder = _mlp([latent, ly // 4, ly // 2, ly, dy], last_act=False)
        self.yx_decoder = _mlp([latent, lx // 4, lx // 2, lx, dx], last_act=False)
        self.xy_decoder = _mlp([latent, ly // 4, ly // 2, ly, dy], last_act=False)

    def init_weights(self, generator: torch.Generator) -> None:
        """Xavier-uniform weights and zero biases, drawn from ``generator`` (CPU)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                weight = torch.empty(module.weight.shape)
                nn.init.xavier_uniform_(weight, generator=generator)
                with torch.no_grad():
                    module.weight.copy_(weight)
                    module.bias.zero_()

    def loss(self, x: torch.Tensor, y: torch.Tensor, alpha: float, lam: float
             ) -> torch.Tensor:
        zx, zy = self.x_encoder(x), self.y_encoder(y)
        mse = nn.functional.mse_loss
        auto = mse(self.xx_decoder(zx), x) + mse(self.yy_decoder(zy), y)
        cross = mse(self.yx_decoder(zy), x) + mse(self.xy_decoder(zx), y)
        return lam * cross + alpha * auto


def standardize(t: torch.Tensor) -> torch.Tensor:
    """Columns to zero mean and unit std (ddof 0) over all rows, constant columns to 0,
    clipped to [-10, 10]: ``latentmi``'s preprocessing, in float32."""
    t = t.to(torch.float32)
    z = (t - t.mean(dim=0)) / t.std(dim=0, correction=0)
    return torch.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).clamp_(-CLIP, CLIP)


@dataclass(frozen=True)
class Embedding:
    """The held-out rows' codes and what the fit did."""

    zx: torch.Tensor  # (n_held, latent)
    zy: torch.Tensor  # (n_held, latent)
    held: torch.Tensor  # (n_held,) row indices into the inputs
    epochs: int  # epochs trained
    best_epoch: int  # 1-based epoch whose network was kept
    held_loss: float  # its held-out loss


def split_rows(n: int, cfg: FitConfig, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) row indices: a seeded permutation, ``latentmi``'s sizes."""
    order = torch.randperm(n, generator=generator)
    n_train = int(n * (1 - cfg.validation_split))
    return order[:n_train], order[n_train:]


def _held_loss(model: PairedAE, x: torch.Tensor, y: torch.Tensor, held: torch.Tensor,
               cfg: FitConfig) -> float:
    """Mean of the held-out batches' losses (``latentmi``'s validation loss)."""
    losses = [model.loss(x[idx], y[idx], cfg.alpha, cfg.lam).item()
              for idx in held.split(cfg.batch_size)]
    return sum(losses) / len(losses)


def fit_embedding(x: torch.Tensor, y: torch.Tensor, cfg: FitConfig) -> Embedding:
    """Train LMI's paired autoencoder on ``x`` (N, dx) and ``y`` (N, dy) and encode the
    held-out rows. Deterministic for a seed on one device and thread count."""
    generator = torch.Generator().manual_seed(cfg.seed)
    device = x.device
    x, y = standardize(x), standardize(y).to(device)
    train, held = split_rows(x.shape[0], cfg, generator)
    train, held = train.to(device), held.to(device)
    model = PairedAE(x.shape[1], y.shape[1], cfg.latent_dim,
                     hidden_width(x.shape[1], cfg.hidden), hidden_width(y.shape[1], cfg.hidden))
    model.init_weights(generator)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, eps=1e-7)
    best, best_epoch, best_state, waited, epoch = math.inf, 0, None, 0, 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = train[torch.randperm(train.numel(), generator=generator).to(device)]
        for idx in order.split(cfg.batch_size):
            loss = model.loss(x[idx], y[idx], cfg.alpha, cfg.lam)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            value = _held_loss(model, x, y, held, cfg)
        if value < best:
            best, best_epoch, waited = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
            if waited >= cfg.patience:
                break
    if best_state is not None:  # None only when every held-out loss was NaN
        model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        zx, zy = model.x_encoder(x[held]), model.y_encoder(y[held])
    return Embedding(zx.detach(), zy.detach(), held, epoch, best_epoch, best)
