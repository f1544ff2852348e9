"""Neural variational MI lower bounds, trained for all channels (or channel pairs) at once.

Every channel gets its own small critic; the critics of a chunk of channels are one set
of batched weights (leading dimension = channel) evaluated with ``torch.bmm``, so there
is no Python loop over channels except over chunks of ``max_channels_batched``.

Seeding is designed so that a channel's estimate does not depend on which other
channels are estimated with it, nor on its position or the chunking:

* one CPU ``torch.Generator`` seeded with ``seed`` draws, in a fixed order, one critic
  initialisation (copied to every channel), the train / hold-out split, the minibatch
  indices of every step (shared by all channels) and the hold-out permutations;
* none of these draws depends on the number of channels;
* inputs are standardised per channel, the per-channel losses are summed (so each
  channel's gradient is its own) and Adam is element-wise, so each channel follows the
  trajectory it would follow alone; the kernels used are batch-invariant, so on CPU the
  values are bitwise equal (tested).

Training: ``steps`` Adam steps on minibatches of ``batch_size`` drawn with replacement
from the training rows, learning rate decayed from ``lr`` to 0 on a cosine.

Bounds (nats):

* ``dv``: Donsker-Varadhan, I >= E_P[T] - log E_{P_T x P_Y}[e^T], trained as MINE
  (Belghazi et al. 2018) with the moving-average bias-corrected gradient: the gradient
  of log E[e^T] is E[∇e^T] / E[e^T] with the denominator replaced by an exponential
  moving average (rate ``ema``), kept in the log domain for stability.
* ``infonce``: I >= E[f(x_i, y_i) - log (1/B) Σ_j e^{f(x_i, y_j)}] (van den Oord et al.
  2018), which can never exceed log B (B = batch size). On the hold-out set every row is
  scored, in batches of B, averaged over ``EVAL_PERMUTATIONS`` random batchings
  (:func:`holdout_infonce`).

The final value is the bound evaluated on a held-out fraction of the samples (not used
for training), so a critic that memorised its training batches does not inflate it.

:func:`joint_mi` trains one such critic on whole vectors (x, y) for I(X;Y). For an
interval, the same trained critics are evaluated again on k disjoint folds of the
hold-out rows (:class:`Folds`): given the critic, the hold-out bound is a mean (InfoNCE)
or a smooth function of two means (DV) of per-row terms, so the spread of the fold
values estimates its sampling error. It says nothing about training noise, and the
bound itself may sit below the true MI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as Fn

from mi_probe.functional.intervals import disjoint_folds

#: rows per block when the trained critics are evaluated on the hold-out set
EVAL_ROWS = 4096
#: random pairings of the hold-out set used for the DV product-of-marginals term of pairs,
#: and random batchings of the hold-out set over which the InfoNCE bound is averaged
EVAL_PERMUTATIONS = 8
#: the fewest samples for a train / hold-out split with at least two rows each
MIN_SAMPLES = 4
#: slope of the leaky ReLU between critic layers (a plain ReLU critic can die: all
#: units off, constant output, a bound of exactly 0)
LEAKY_SLOPE = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """What one estimate needs: the bound, the critic width and the training budget."""

    bound: str  # "dv" | "infonce"
    hidden: int = 64
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    ema: float = 0.01
    eval_fraction: float = 0.25
    max_channels_batched: int = 64

    def __post_init__(self) -> None:
        if self.bound not in ("dv", "infonce"):
            raise ValueError(f"unknown bound {self.bound!r}; valid: dv, infonce")


# --------------------------------------------------------------------------- critics


def init_mlp(gen: torch.Generator, sizes: list[int]) -> list[torch.Tensor]:
    """One MLP's weights as [W (1, in, out), b (1, 1, out)] per layer, drawn like
    ``nn.Linear``'s default (uniform in ±1/sqrt(fan_in)). The leading 1 is the channel
    dimension; :func:`replicate` copies the same critic to every channel."""
    params: list[torch.Tensor] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        w = (torch.rand(1, fan_in, fan_out, generator=gen) * 2 - 1) * bound
        b = (torch.rand(1, 1, fan_out, generator=gen) * 2 - 1) * bound
        params += [w, b]
    return params


def replicate(params: list[torch.Tensor], channels: int, device: torch.device
              ) -> list[torch.Tensor]:
    """Batched trainable copies of one critic: every tensor gets ``channels`` rows."""
    return [p.to(device).expand(channels, *p.shape[1:]).clone().requires_grad_()
            for p in params]


def mlp(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Batched MLP: ``x`` (C, n, in) -> (C, n, out); leaky ReLU between layers.

    Each channel's result is bitwise the same whatever the number of channels (checked
    on CPU): ``bmm`` is batch-invariant here except for a single output column, which is
    computed as a row-wise dot product instead."""
    h = x
    last = len(params) // 2 - 1
    for layer in range(last + 1):
        w, b = params[2 * layer], params[2 * layer + 1]
        if w.shape[2] == 1:  # a matrix-vector product: bmm picks a kernel by batch size
            h = (h * w.transpose(1, 2)).sum(2, keepdim=True) + b
        else:
            h = torch.baddbmm(b, h, w)
        if layer < last:
            h = Fn.leaky_relu(h, LEAKY_SLOPE)
    return h


def _mlp_blocks(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`mlp` over row blocks (evaluation without gradients, bounded memory)."""
    return torch.cat([mlp(params, x[:, i:i + EVAL_ROWS]) for i in range(0, x.shape[1], EVAL_ROWS)],
                     dim=1)


# ---------------------------------------------------------------------------- bounds


def _log_mean_exp(v: torch.Tensor, dims: tuple[int, ...], count: int) -> torch.Tensor:
    return torch.logsumexp(v, dim=dims) - math.log(count)


def label_scores_joint(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """scores (C, n, K), labels (n,) -> the critic at the observed pairs, (C, n)."""
    c, n, _ = scores.shape
    return scores.gather(2, y.view(1, n, 1).expand(c, n, 1)).squeeze(2)


def dv_label(scores: torch.Tensor, y: torch.Tensor, log_p: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """DV terms for a discrete Y: (E_P[T], log E_{P_T x P_Y}[e^T]) per channel.

    The product-of-marginals expectation over Y is taken exactly over the K classes
    with class probabilities ``exp(log_p)`` (a Rao-Blackwellised form of MINE's
    shuffled pairs: same expectation, less variance)."""
    joint = label_scores_joint(scores, y).mean(1)
    log_marg = _log_mean_exp(scores + log_p, (1, 2), scores.shape[1])
    return joint, log_marg


def infonce_label_terms(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE terms f(t_i, y_i) − log (1/B) Σ_j e^{f(t_i, y_j)} of one batch of a
    discrete Y, one per row: (C, B), each at most log B.

    The B x B score matrix S_ij = f(t_i, y_j) depends on j only through y_j's class, so
    log Σ_j e^{S_ij} = log Σ_k n_k e^{f(t_i, k)} with n_k the batch's class counts."""
    n, k = scores.shape[1], scores.shape[2]
    log_counts = torch.bincount(y, minlength=k).to(scores.dtype).log()
    lse = torch.logsumexp(scores + log_counts, dim=2)
    return label_scores_joint(scores, y) - lse + math.log(n)


def infonce_label(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """InfoNCE per channel for one batch of a discrete Y: the mean of its terms, (C,)."""
    return infonce_label_terms(scores, y).mean(1)


def infonce_pair_terms(gx: torch.Tensor, hz: torch.Tensor) -> torch.Tensor:
    """InfoNCE terms per row of one batch with a separable critic f(x, z) = g(x)·h(z),
    (C, B, E) each: (C, B), each at most log B."""
    s = torch.bmm(gx, hz.transpose(1, 2))
    n = s.shape[1]
    return s.diagonal(dim1=1, dim2=2) - torch.logsumexp(s, dim=2) + math.log(n)


def infonce_pair(gx: torch.Tensor, hz: torch.Tensor) -> torch.Tensor:
    """InfoNCE per pair for one batch: the mean of its terms, (C,)."""
    return infonce_pair_terms(gx, hz).mean(1)


# ------------------------------------------------------------------------ data plans


@dataclass
class Plan:
    """Everything random about one estimate, drawn once (independent of the channels)."""

    init: list[torch.Tensor]
    init2: list[torch.Tensor] | None
    train_idx: torch.Tensor
    eval_idx: torch.Tensor
    batches: torch.Tensor            # (steps, B) indices into the training rows
    marginal_batches: torch.Tensor | None  # (steps, B) for DV pairs: partners of z
    #: (R, n_eval): hold-out pairings (DV pairs) or hold-out batchings (InfoNCE)
    eval_perms: torch.Tensor | None

    @property
    def batch(self) -> int:
        return self.batches.shape[1]


def holdout_size(n: int, cfg: TrainConfig) -> int:
    """Rows held out of training (at least 2, leaving at least 2 to train on)."""
    return min(max(2, int(round(n * cfg.eval_fraction))), n - 2)


def make_plan(n: int, cfg: TrainConfig, sizes: list[int], sizes2: list[int] | None = None,
              pair_dv: bool = False) -> Plan:
    if n < MIN_SAMPLES:
        raise ValueError(f"needs at least {MIN_SAMPLES} samples (a training and a hold-out "
                         f"part of two or more each), got {n}")
    gen = torch.Generator().manual_seed(cfg.seed)
    init = init_mlp(gen, sizes)
    init2 = init_mlp(gen, sizes2) if sizes2 is not None else None
    n_eval = holdout_size(n, cfg)
    perm = torch.randperm(n, generator=gen)
    eval_idx, train_idx = perm[:n_eval], perm[n_eval:]
    n_train = n - n_eval
    batch = min(cfg.batch_size, n_train)
    batches = torch.randint(n_train, (cfg.steps, batch), generator=gen)
    marginal = torch.randint(n_train, (cfg.steps, batch), generator=gen) if pair_dv else None
    # drawn last, so the training draws above do not depend on them
    eval_perms = (torch.stack([torch.randperm(n_eval, generator=gen)
                               for _ in range(EVAL_PERMUTATIONS)])
                  if pair_dv or cfg.bound == "infonce" else None)
    return Plan(init, init2, train_idx, eval_idx, batches, marginal, eval_perms)


def standardize(x: torch.Tensor, train_idx: torch.Tensor) -> torch.Tensor:
    """(N, C) -> (C, N) float32, each channel centred and scaled by its training rows
    (a constant channel is left at scale 1).

    Statistics are reduced along contiguous rows of the (C, N) float64 transpose, so a
    channel's values do not depend on how many other channels come with it (a strided
    reduction over dim 0 of (N, C) sums in a C-dependent order)."""
    xt = x.to(torch.float64).T.contiguous()
    ref = xt[:, train_idx]
    mean = ref.mean(1, keepdim=True)
    std = ref.std(1, keepdim=True)
    std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
    return ((xt - mean) / std).to(torch.float32)


def _train(params: list[torch.Tensor], cfg: TrainConfig,
           step_loss: Callable[[int], torch.Tensor]) -> None:
    """Adam on the summed per-channel losses (each channel's gradient is its own), the
    learning rate following a cosine decay from ``lr`` to 0 over ``steps``."""
    opt = torch.optim.Adam(params, lr=cfg.lr)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        opt.zero_grad(set_to_none=True)
        step_loss(step).sum().backward()
        opt.step()


def _mine_loss(joint: torch.Tensor, log_marg: torch.Tensor, state: dict[str, torch.Tensor],
               ema: float) -> torch.Tensor:
    """MINE's bias-corrected surrogate loss, per channel.

    Its gradient is -(∇E[T] - ∇E[e^T] / ma) with ma the moving average of E[e^T]
    (log domain: log_ma <- logaddexp(log(1-ema) + log_ma, log(ema) + log E[e^T]))."""
    lm = log_marg.detach()
    if "log_ma" not in state:
        state["log_ma"] = lm
    elif ema >= 1:
        state["log_ma"] = lm
    else:
        state["log_ma"] = torch.logaddexp(state["log_ma"] + math.log1p(-ema), lm + math.log(ema))
    return -(joint - torch.exp(log_marg - state["log_ma"]))


# ------------------------------------------------------------------- hold-out folds


@dataclass(frozen=True)
class Folds:
    """Disjoint folds of the hold-out rows, on which a trained critic's bound is evaluated
    again for an interval (the critic is trained once; only its evaluation is split).

    ``rows[f]`` indexes the hold-out rows of fold f (``n_eval // k`` each, the remainder
    left out); ``pairings[f]`` (R, size) holds R random orders of the fold's positions:
    the product-of-marginals partners of the DV bound of pairs, drawn within the fold."""

    rows: list[torch.Tensor]
    pairings: list[torch.Tensor]

    @property
    def size(self) -> int:
        return int(self.rows[0].numel())


def make_folds(n_eval: int, folds: int, seed: int) -> Folds:
    """``folds`` disjoint folds of ``n_eval`` hold-out rows from a CPU generator seeded with
    ``seed`` (independent of the estimator's own seed, so the estimate does not move)."""
    gen = torch.Generator().manual_seed(seed)
    rows = disjoint_folds(n_eval, folds, gen)
    size = int(rows[0].numel())
    pairings = [torch.stack([torch.randperm(size, generator=gen)
                             for _ in range(EVAL_PERMUTATIONS)]) for _ in rows]
    return Folds(rows, pairings)


def _fold_means(per_row: torch.Tensor, folds: Folds) -> torch.Tensor:
    """(C, n_eval) per-row terms -> (k, C) their mean over each fold's rows."""
    return torch.stack([per_row[:, rows.to(per_row.device)].mean(1) for rows in folds.rows])


# -------------------------------------------------------------------- label estimate


def label_mi(acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
             cfg: TrainConfig) -> torch.Tensor:
    """Per-channel lower bound on I(T_c; Y) for ``acts`` (N, C), ``labels`` (N,) in
    [0, num_classes): float64 (C,) on the input's device, clipped at 0.

    Critic per channel: T_c(t, ·) = MLP_c(t) in R^K (1 -> hidden -> hidden -> K), i.e.
    one output per class, which is the general critic for a one-hot Y."""
    return _label_bound(acts, labels, num_classes, cfg, None)[0].clamp_min(0.0)


def label_mi_folds(acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   cfg: TrainConfig, folds: Folds) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`label_mi` (C,) and the unclipped bound of the same critics on each hold-out
    fold, (k, C): DV with the fold's own class frequencies; InfoNCE as the mean over the
    fold's rows of each row's term (against full batches of the whole hold-out set)."""
    values, fold_values = _label_bound(acts, labels, num_classes, cfg, folds)
    assert fold_values is not None
    return values.clamp_min(0.0), fold_values


def _label_bound(acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 cfg: TrainConfig, folds: Folds | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The unclipped bound per channel, (C,), and with ``folds`` its value per fold, (k, C)."""
    device = acts.device
    n, channels = acts.shape
    fold_out = (torch.empty(len(folds.rows), channels, dtype=torch.float64, device=device)
                if folds is not None else None)
    if channels == 0:
        return torch.zeros(0, dtype=torch.float64, device=device), fold_out
    k = num_classes
    plan = make_plan(n, cfg, [1, cfg.hidden, cfg.hidden, k])
    x = standardize(acts, plan.train_idx.to(device))
    y = labels.to(device=device, dtype=torch.long)
    y_train, y_eval = y[plan.train_idx.to(device)], y[plan.eval_idx.to(device)]
    x_train_all, x_eval_all = x[:, plan.train_idx.to(device)], x[:, plan.eval_idx.to(device)]
    batches = plan.batches.to(device)
    log_p_train = torch.bincount(y_train, minlength=k).to(torch.float32).div(len(y_train)).log()
    log_p_eval = torch.bincount(y_eval, minlength=k).to(torch.float32).div(len(y_eval)).log()
    out = torch.empty(channels, dtype=torch.float64, device=device)
    for lo in range(0, channels, cfg.max_channels_batched):
        hi = min(channels, lo + cfg.max_channels_batched)
        x_train, x_eval = x_train_all[lo:hi], x_eval_all[lo:hi]
        params = replicate(plan.init, hi - lo, device)
        state: dict[str, torch.Tensor] = {}

        def step_loss(step: int) -> torch.Tensor:
            idx = batches[step]
            scores = mlp(params, x_train[:, idx, None])
            yb = y_train[idx]
            if cfg.bound == "dv":
                joint, log_marg = dv_label(scores, yb, log_p_train)
                return _mine_loss(joint, log_marg, state, cfg.ema)
            return -infonce_label(scores, yb)

        _train(params, cfg, step_loss)
        with torch.no_grad():
            scores = _mlp_blocks(params, x_eval[:, :, None])
            if cfg.bound == "dv":
                joint, log_marg = dv_label(scores, y_eval, log_p_eval)
                value = joint - log_marg
                if folds is not None and fold_out is not None:
                    fold_out[:, lo:hi] = torch.stack(
                        [_dv_label_fold(scores, y_eval, rows.to(device), k) for rows in folds.rows])
            else:
                def terms(idx: torch.Tensor) -> torch.Tensor:
                    return infonce_label_terms(scores[:, idx], y_eval[idx])

                assert plan.eval_perms is not None
                perms = plan.eval_perms.to(device)
                value = holdout_infonce(terms, perms, plan.batch)
                if folds is not None and fold_out is not None:
                    fold_out[:, lo:hi] = _fold_means(holdout_infonce_rows(terms, perms, plan.batch),
                                                     folds)
        out[lo:hi] = value.to(torch.float64)
    return out, fold_out


def _dv_label_fold(scores: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, k: int
                   ) -> torch.Tensor:
    """The DV bound of hold-out ``rows`` alone (their own class frequencies): (C,) float64."""
    y_f = y[rows]
    log_p = torch.bincount(y_f, minlength=k).to(torch.float32).div(len(y_f)).log()
    joint, log_marg = dv_label(scores[:, rows], y_f, log_p)
    return (joint - log_marg).to(torch.float64)


def _batchings(orders: torch.Tensor, batch: int
               ) -> Iterator[tuple[torch.Tensor, int]]:
    """(block of hold-out rows, how many of its first rows are scored) for every batch of
    every batching: each order is cut into batches of ``min(batch, n_eval)`` rows, the
    last, short batch filled up from the start of the order (its filler rows unscored)."""
    n_eval = orders.shape[1]
    size = min(batch, n_eval)
    n_blocks = -(-n_eval // size)
    for order in orders:
        padded = torch.cat([order, order[:n_blocks * size - n_eval]])
        for block in range(n_blocks):
            yield padded[block * size:(block + 1) * size], min(size, n_eval - block * size)


def holdout_infonce(terms: Callable[[torch.Tensor], torch.Tensor], orders: torch.Tensor,
                    batch: int) -> torch.Tensor:
    """InfoNCE on the whole hold-out set, averaged over batchings: (C,).

    ``terms(idx)`` gives the (C, len(idx)) per-row terms of the batch of hold-out rows
    ``idx``; ``orders`` (R, n_eval) holds R random orders of the hold-out rows. Each order
    is cut into consecutive batches of ``size = min(batch, n_eval)``; the last, short
    batch is filled up with rows from the start of the order, but only its own rows are
    scored. So every row is scored exactly once per batching, always against a contrast
    set of ``size`` rows (the training batch size, hence the same log B cap), and the
    value is the mean over all rows and batchings. When the hold-out set fits in one
    batch, that one batch is the whole set and the order does not matter."""
    n_eval = orders.shape[1]
    if min(batch, n_eval) == n_eval:
        return terms(orders[0]).to(torch.float64).mean(1)
    total = None
    for idx, keep in _batchings(orders, batch):
        part = terms(idx)[:, :keep].sum(1, dtype=torch.float64)
        total = part if total is None else total + part
    assert total is not None
    return total / (n_eval * orders.shape[0])


def holdout_infonce_rows(terms: Callable[[torch.Tensor], torch.Tensor], orders: torch.Tensor,
                         batch: int) -> torch.Tensor:
    """Each hold-out row's InfoNCE term averaged over the batchings of
    :func:`holdout_infonce`: (C, n_eval) float64 in hold-out order. Their mean is
    :func:`holdout_infonce`'s value up to rounding; the per-row terms are what a fold
    interval averages."""
    n_eval = orders.shape[1]
    if min(batch, n_eval) == n_eval:
        order = orders[0]
        part = terms(order).to(torch.float64)
        out = torch.empty_like(part)
        out[:, order.to(part.device)] = part
        return out
    total: torch.Tensor | None = None
    for idx, keep in _batchings(orders, batch):
        part = terms(idx)[:, :keep].to(torch.float64)
        if total is None:
            total = torch.zeros(part.shape[0], n_eval, dtype=torch.float64, device=part.device)
        total[:, idx[:keep].to(part.device)] += part
    assert total is not None
    return total / orders.shape[0]


# --------------------------------------------------------------- pair and joint estimates


def _pair_bound(x_tr: torch.Tensor, z_tr: torch.Tensor, x_ev: torch.Tensor, z_ev: torch.Tensor,
                plan: Plan, cfg: TrainConfig, folds: Folds | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Critics of C pairs of variables trained at once, and their bound on the hold-out
    rows: (C,) unclipped and, with ``folds``, (k, C) per fold.

    ``x_*`` (C, n, dx), ``z_*`` (C, n, dz): standardised training (``_tr``) and hold-out
    (``_ev``) rows. ``dv``: T(x, z) = MLP([x, z]) -> 1, product-of-marginals partners from
    ``plan.marginal_batches`` in training and ``plan.eval_perms`` on the hold-out set (each
    fold: its own pairings within the fold). ``infonce``: separable f(x, z) = g(x)·h(z),
    g, h -> hidden, a B x B score matrix per step; folds average per-row terms."""
    device = x_tr.device
    c = x_tr.shape[0]
    batches = plan.batches.to(device)
    assert plan.eval_perms is not None
    perms = plan.eval_perms.to(device)
    fold_values: torch.Tensor | None = None
    if cfg.bound == "dv":
        assert plan.marginal_batches is not None
        marg = plan.marginal_batches.to(device)
        params = replicate(plan.init, c, device)
        state: dict[str, torch.Tensor] = {}

        def step_loss(step: int) -> torch.Tensor:
            idx, idx2 = batches[step], marg[step]
            xs = x_tr[:, idx]
            t_joint = mlp(params, torch.cat([xs, z_tr[:, idx]], 2)).squeeze(2)
            t_marg = mlp(params, torch.cat([xs, z_tr[:, idx2]], 2)).squeeze(2)
            log_marg = _log_mean_exp(t_marg, (1,), t_marg.shape[1])
            return _mine_loss(t_joint.mean(1), log_marg, state, cfg.ema)

        _train(params, cfg, step_loss)

        def held_out(xs: torch.Tensor, zs: torch.Tensor, pairings: torch.Tensor) -> torch.Tensor:
            joint = _mlp_blocks(params, torch.cat([xs, zs], 2)).squeeze(2).mean(1)
            t_marg = torch.cat([_mlp_blocks(params, torch.cat([xs, zs[:, p]], 2)).squeeze(2)
                                for p in pairings], dim=1)
            return joint - _log_mean_exp(t_marg, (1,), t_marg.shape[1])

        with torch.no_grad():
            value = held_out(x_ev, z_ev, perms)
            if folds is not None:
                fold_values = torch.stack([
                    held_out(x_ev[:, rows.to(device)], z_ev[:, rows.to(device)], p.to(device))
                    for rows, p in zip(folds.rows, folds.pairings)]).to(torch.float64)
    else:
        assert plan.init2 is not None
        g_params = replicate(plan.init, c, device)
        h_params = replicate(plan.init2, c, device)

        def step_loss(step: int) -> torch.Tensor:
            idx = batches[step]
            return -infonce_pair(mlp(g_params, x_tr[:, idx]), mlp(h_params, z_tr[:, idx]))

        _train(g_params + h_params, cfg, step_loss)
        with torch.no_grad():
            gx = _mlp_blocks(g_params, x_ev)
            hz = _mlp_blocks(h_params, z_ev)

            def terms(idx: torch.Tensor) -> torch.Tensor:
                return infonce_pair_terms(gx[:, idx], hz[:, idx])

            value = holdout_infonce(terms, perms, plan.batch)
            if folds is not None:
                fold_values = _fold_means(holdout_infonce_rows(terms, perms, plan.batch), folds)
    return value.to(torch.float64), fold_values


def _pair_plan(n: int, cfg: TrainConfig, dx: int, dz: int) -> Plan:
    h = cfg.hidden
    if cfg.bound == "dv":
        return make_plan(n, cfg, [dx + dz, h, h, 1], pair_dv=True)
    return make_plan(n, cfg, [dx, h, h, h], [dz, h, h, h])


def pair_mi(a: torch.Tensor, b: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """Lower bound on I(A_i; B_j) for every column pair of ``a`` (N, C1), ``b`` (N, C2):
    float64 (C1, C2) on ``a``'s device, clipped at 0. Pairs are trained in parallel.

    Critics: ``dv`` uses T(x, z) = MLP([x, z]) (2 -> hidden -> hidden -> 1);
    ``infonce`` a separable f(x, z) = g(x)·h(z) with g, h: 1 -> hidden -> hidden -> hidden
    (a B x B score matrix per step at the cost of 2B critic evaluations)."""
    device = a.device
    n, c1 = a.shape
    c2 = b.shape[1]
    if c1 * c2 == 0:
        return torch.zeros(c1, c2, dtype=torch.float64, device=device)
    plan = _pair_plan(n, cfg, 1, 1)
    tr, ev = plan.train_idx.to(device), plan.eval_idx.to(device)
    xa, xb = standardize(a, tr), standardize(b.to(device), tr)
    ii = torch.arange(c1, device=device).repeat_interleave(c2)
    jj = torch.arange(c2, device=device).repeat(c1)
    pairs = c1 * c2
    out = torch.empty(pairs, dtype=torch.float64, device=device)
    for lo in range(0, pairs, cfg.max_channels_batched):
        hi = min(pairs, lo + cfg.max_channels_batched)
        xs, zs = xa[ii[lo:hi]][:, :, None], xb[jj[lo:hi]][:, :, None]
        out[lo:hi] = _pair_bound(xs[:, tr], zs[:, tr], xs[:, ev], zs[:, ev], plan, cfg, None)[0]
    return out.clamp_min(0.0).reshape(c1, c2)


def joint_mi(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, folds: Folds | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Lower bound on I(X; Y) of ``x`` (N, dx) and ``y`` (N, dy), row i with row i: a 0-d
    float64 on ``x``'s device, clipped at 0, and with ``folds`` the unclipped bound of the
    same critic on each hold-out fold, (k,).

    One critic on whole vectors, each dimension standardised on the training rows:
    ``dv`` T(x, y) = MLP([x, y]) (dx + dy -> hidden -> hidden -> 1), trained as MINE;
    ``infonce`` separable g(x)·h(y) (dx -> hidden -> hidden -> hidden, and dy -> ...)."""
    device = x.device
    n, dx = x.shape
    dy = y.shape[1]
    plan = _pair_plan(n, cfg, dx, dy)
    tr, ev = plan.train_idx.to(device), plan.eval_idx.to(device)
    xs = standardize(x, tr).T[None]   # (1, N, dx)
    ys = standardize(y.to(device), tr).T[None]
    value, fold_values = _pair_bound(xs[:, tr], ys[:, tr], xs[:, ev], ys[:, ev], plan, cfg, folds)
    return value[0].clamp_min(0.0), (fold_values[:, 0] if fold_values is not None else None)
