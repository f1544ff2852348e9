"""The ``lmi`` estimator plugin: latent mutual information of high-dimensional variables.

Registered through the ``mi_probe`` entry point of this distribution
(``lmi = "mi_probe_lmi.plugin"``), so ``estimator: {kind: lmi}`` validates once
``mi-probe-lmi`` is installed. Imports mi-probe only through ``mi_probe.plugin``; the
per-channel label MI is the ``ksg`` plugin's (a declared dependency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from mi_probe.plugin import EstimatorError, Interval, LayerMI, hookimpl

if TYPE_CHECKING:  # annotations only: torch loads when an estimate is made
    import torch

    from mi_probe_lmi.lmi import Embedding, FitConfig


class LMIParams(BaseModel):
    """LMI (Gowri et al. 2024): a learned small code per variable, then KSG on the codes."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["lmi"] = "lmi"
    latent_dim: int = Field(8, ge=1, description="dimensions of each variable's code "
                            "(latentmi's N_dims)")
    hidden: int | None = Field(
        None, ge=4, description="width L of the first hidden layer (then L/2, L/4); None: "
        "latentmi's rule, 1024, or the largest power of two <= D above D = 2048")
    epochs: int = Field(300, ge=1, description="most training epochs")
    patience: int = Field(30, ge=1, description="stop after this many epochs without a "
                          "lower held-out loss; the network of the best epoch is kept")
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-4, gt=0, description="Adam learning rate (eps 1e-7)")
    validation_split: float = Field(
        0.5, gt=0, lt=1, description="share of the rows held out: they stop training and "
        "are the only rows KSG sees")
    alpha: float = Field(1.0, ge=0, description="weight of each code's own reconstruction")
    lam: float = Field(1.0, ge=0, description="weight of the cross-prediction terms")
    k: int = Field(3, ge=1, description="neighbours of the KSG estimate on the codes")
    seed: int = Field(0, description="seed of the split, the initial weights, the batches "
                      "and the tie-breaking noise (deterministic)")
    interval_folds: int = Field(
        10, ge=2, description="disjoint folds of the held-out codes behind joint_mi_interval "
        "(kfold: the embedding is trained once; KSG on each fold gives the spread) and of "
        "the rows behind label_mi_interval (the ksg plugin's subsample interval)")
    max_dims: int = Field(
        8192, ge=1, description="largest dimension of one variable accepted (the first "
        "layer holds D x L weights): above it, project the site first "
        "(sites.reduce: {project: <dims>})")


def _tensor(name: str, t: Any, ndim: int) -> torch.Tensor:
    import torch

    if not isinstance(t, torch.Tensor):
        raise EstimatorError(f"lmi estimator: {name} must be a torch.Tensor, got "
                             f"{type(t).__name__}")
    if t.ndim != ndim:
        want = "(N, D)" if ndim == 2 else "(N,)"
        raise EstimatorError(f"lmi estimator expects {want} {name}, got shape "
                             f"{tuple(t.shape)}")
    return t


def _samples(name: str, t: Any, max_dims: int) -> torch.Tensor:
    """A finite real (N, D) tensor with 1 <= D <= max_dims."""
    import torch

    t = _tensor(name, t, 2)
    if t.is_complex() or not (t.dtype.is_floating_point or t.dtype == torch.int64
                              or t.dtype == torch.int32):
        raise EstimatorError(f"lmi estimator: {name} must be real numbers, got dtype {t.dtype}")
    if t.shape[1] < 1:
        raise EstimatorError(f"lmi estimator: {name} has no dimensions (shape "
                             f"{tuple(t.shape)})")
    if t.shape[1] > max_dims:
        raise EstimatorError(f"lmi estimator: {name} has D = {t.shape[1]} dimensions, above "
                             f"max_dims = {max_dims} (the first layer would hold D x L "
                             "weights); project it first (sites.reduce: {project: <dims>}) or "
                             "raise max_dims")
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise EstimatorError(f"lmi estimator: {name} holds {bad} NaN or Inf values")
    return t


class LMIEstimator:
    """Latent MI. ``joint_mi(x, y)`` (``interfaces.JointMI``) and
    ``vector_label_mi(acts, labels, K)`` (``interfaces.VectorLabelMI``) embed the
    high-dimensional variables with LMI's paired autoencoder and estimate MI on the
    held-out rows' codes: KSG estimator 1 for two continuous variables, Ross (2014) for
    a code and labels. For labels the second variable of the autoencoder is the one-hot
    label vector: its cross-prediction term trains the activation code to predict the
    label (and the label code to predict the activations), the rest is LMI unchanged;
    the label codes themselves are not used (they take only K values).

    The per-channel methods of the ``Estimator`` contract need no embedding (one channel
    is already one dimension): ``label_mi`` is the ``ksg`` plugin's Ross estimate with
    this estimator's ``k`` and ``seed``, ``layer_mi`` reduces by ``mean`` (of those) or
    ``joint`` (``vector_label_mi`` of the layer's channel vector), ``input_mi`` is None
    and ``bias`` 0.0 (no known figure).
    """

    name = "lmi"
    reductions: frozenset[str] = frozenset({"joint"})

    def __init__(self, params: LMIParams | None = None):
        self.params = params if params is not None else LMIParams()
        self.k = self.params.k
        #: abilities' size limits: one variable, and x and y together
        self.max_dims: int | None = self.params.max_dims
        self.max_joint_dims: int | None = 2 * self.params.max_dims
        #: what the last embedding did (epochs, best epoch, held-out rows), for reports
        self.last_fit: dict[str, Any] = {}

    # -- helpers -------------------------------------------------------------------
    def _config(self) -> FitConfig:
        from mi_probe_lmi.lmi import FitConfig

        p = self.params
        return FitConfig(latent_dim=p.latent_dim, hidden=p.hidden, epochs=p.epochs,
                         patience=p.patience, batch_size=p.batch_size, lr=p.lr,
                         validation_split=p.validation_split, alpha=p.alpha, lam=p.lam,
                         seed=p.seed)

    def _held_out(self, n: int) -> int:
        """Held-out rows of ``n`` (``lmi.split_rows``' sizes); refuses too few."""
        n_train = int(n * (1 - self.params.validation_split))
        held = n - n_train
        if n_train < 1 or held <= self.k:
            raise EstimatorError(
                f"lmi estimator: {n} samples split {n_train} to train and {held} held out "
                f"(validation_split = {self.params.validation_split}); KSG on the held-out "
                f"rows needs more than k = {self.k}, and training needs at least one")
        return held

    def _jitter(self, *codes: torch.Tensor) -> list[torch.Tensor]:
        """The codes in float64 with the ``ksg`` plugin's seeded tie-breaking noise."""
        import torch

        from mi_probe_ksg import ksg as K

        gen = torch.Generator().manual_seed(self.params.seed)
        return [K.add_tie_noise(c, gen) for c in codes]

    def _fit(self, x: torch.Tensor, y: torch.Tensor) -> Embedding:
        from mi_probe_lmi.lmi import fit_embedding

        emb = fit_embedding(x, y, self._config())
        self.last_fit = {"epochs": emb.epochs, "best_epoch": emb.best_epoch,
                         "held_out": int(emb.held.numel()), "held_loss": emb.held_loss}
        return emb

    # -- interfaces.JointMI ----------------------------------------------------------
    def _joint_codes(self, x: torch.Tensor, y: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The held-out codes of paired ``x`` (N, dx) and ``y`` (N, dy) after one seeded
        fit, with the tie-breaking noise; None when a code collapsed (no information)."""
        x = _samples("x", x, self.params.max_dims)
        y = _samples("y", y, self.params.max_dims)
        if x.shape[0] != y.shape[0]:
            raise EstimatorError(f"lmi estimator: joint_mi needs paired rows, got "
                                 f"{x.shape[0]} x rows and {y.shape[0]} y rows")
        self._held_out(x.shape[0])
        emb = self._fit(x, y.to(x.device))
        if _constant(emb.zx) or _constant(emb.zy):
            return None
        zx, zy = self._jitter(emb.zx, emb.zy)
        return zx, zy

    def joint_mi(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """I(X;Y) in nats of paired rows of ``x`` (N, dx) and ``y`` (N, dy)."""
        from mi_probe_lmi import knn

        codes = self._joint_codes(x, y)
        return 0.0 if codes is None else knn.ksg_joint(*codes, self.k)

    # -- interfaces.Intervals, JointMIIntervals ---------------------------------------
    interval_method = "kfold"

    def joint_mi_interval(self, x: torch.Tensor, y: torch.Tensor, level: float, seed: int
                          ) -> Interval:
        """Interval of ``joint_mi`` given the trained embedding: the held-out codes cut
        into ``interval_folds`` disjoint folds (seeded by ``seed``), KSG on each, and
        ``estimate ± t · sd(folds) · sqrt(fold / held-out)``. It describes the KSG step's
        sampling error, not the training noise of the embedding (docs/estimators.md)."""
        import torch

        from mi_probe.functional.intervals import disjoint_folds, subsample_interval
        from mi_probe_lmi import knn

        codes = self._joint_codes(x, y)
        if codes is None:  # a collapsed code carries no information
            zero = torch.zeros((), dtype=torch.float64)
            return Interval(estimate=zero, low=zero, high=zero, level=level,
                            method=self.interval_method)
        zx, zy = codes
        estimate = torch.tensor(knn.ksg_joint(zx, zy, self.k), dtype=torch.float64)
        n = zx.shape[0]
        try:
            folds = disjoint_folds(n, self.params.interval_folds,
                                   torch.Generator().manual_seed(seed))
            subs = torch.tensor([knn.ksg_joint(zx[f], zy[f], self.k) for f in folds],
                                dtype=torch.float64)
            centre, low, high = subsample_interval(estimate, subs, n, folds[0].numel(), level)
        except ValueError as exc:
            raise EstimatorError(f"lmi estimator: {exc}") from exc
        return Interval(estimate=estimate, low=low.clamp_min(0.0), high=high, level=level,
                        method=self.interval_method)

    def label_mi_interval(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          level: float, seed: int) -> tuple[Interval, Interval]:
        """The ``ksg`` plugin's subsample intervals of the per-channel values
        (``label_mi`` is its estimate)."""
        from mi_probe_ksg import KSGEstimator, KSGParams

        return KSGEstimator(KSGParams(k=self.k, seed=self.params.seed,
                                      interval_folds=self.params.interval_folds)
                            ).label_mi_interval(acts, labels, num_classes, level, seed)

    # -- interfaces.VectorLabelMI ------------------------------------------------------
    def vector_label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                        ) -> float:
        """I(T;Y) in nats of (N, D) activations and (N,) integer labels."""
        import torch

        from mi_probe_lmi import knn

        acts = _samples("activations", acts, self.params.max_dims)
        labels = _labels(labels, acts.shape[0], num_classes).to(acts.device)
        self._held_out(acts.shape[0])
        onehot = torch.nn.functional.one_hot(labels, int(num_classes)).to(torch.float32)
        emb = self._fit(acts, onehot)
        held_labels = labels[emb.held]
        if int(torch.bincount(held_labels).max()) < 2:
            raise EstimatorError(f"lmi estimator: no class has two of the {emb.held.numel()} "
                                 "held-out samples; Ross's KSG needs one (more samples, or a "
                                 "smaller validation_split)")
        if _constant(emb.zx):
            return 0.0
        (zx,) = self._jitter(emb.zx)
        return knn.ksg_label(zx, held_labels, self.k)

    # -- interfaces.Estimator ------------------------------------------------------------
    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                 ) -> torch.Tensor:
        """Per-channel I(T_c;Y): the ``ksg`` plugin's estimate (same ``k`` and ``seed``)."""
        from mi_probe_ksg import KSGEstimator, KSGParams

        return KSGEstimator(KSGParams(k=self.k, seed=self.params.seed)).label_mi(
            acts, labels, num_classes)

    def input_mi(self, acts: torch.Tensor) -> None:
        """Not estimated (no I(X;T_c) under the histogram convention)."""
        return None

    def layer_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 reduce: str) -> LayerMI:
        if reduce == "mean":
            return LayerMI(None, self.label_mi(acts, labels, num_classes).mean().item())
        if reduce == "joint":
            return LayerMI(None, self.vector_label_mi(acts, labels, num_classes))
        raise EstimatorError(f"lmi estimator has no layer reduction {reduce!r}; valid: "
                             "['mean', 'joint'] (mean of the per-channel KSG values, or LMI "
                             "of the channel vector)")

    def bias(self, n_samples: int, num_classes: int) -> float:
        return 0.0

    def describe(self) -> dict[str, Any]:
        p = self.params
        return {
            "estimator": "lmi", "i_xt": "not estimated",
            "method": "latent MI (Gowri et al., NeurIPS 2024): LMI's AECross paired "
                      "autoencoder, then KSG on the held-out rows' codes",
            "latent_dim": p.latent_dim,
            "hidden": p.hidden if p.hidden is not None else "latentmi rule (1024; 2**floor(log2 D) above 2048)",
            "epochs": p.epochs, "patience": p.patience, "batch_size": p.batch_size,
            "lr": p.lr, "optimizer": "Adam, eps 1e-7",
            "validation_split": p.validation_split, "alpha": p.alpha, "lam": p.lam,
            "k": p.k, "seed": p.seed, "max_dims": p.max_dims,
            "joint_mi": "KSG estimator 1 (max-norm) on the two codes",
            "vector_label_mi": "Ross 2014 KSG on the activation code; labels enter training "
                               "as the one-hot second variable (cross-prediction)",
            "label_mi": "ksg plugin (Ross 2014, per channel)",
            "preprocessing": "per-column standardisation over all rows, clip [-10, 10]",
            "differences_from_latentmi": "seeded; keeps the best held-out epoch's network; "
                                         "nats",
        }


def _labels(labels: Any, n: int, num_classes: int) -> torch.Tensor:
    import torch

    labels = _tensor("labels", labels, 1)
    if labels.shape[0] != n:
        raise EstimatorError(f"lmi estimator: labels must be ({n},) to match the "
                             f"activations' rows, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.is_complex() or labels.dtype == torch.bool:
        raise EstimatorError(f"lmi estimator: labels must be integers, got dtype {labels.dtype}")
    if int(num_classes) < 2:
        raise EstimatorError(f"lmi estimator: num_classes must be >= 2, got {num_classes}")
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise EstimatorError(f"lmi estimator: labels must lie in [0, {num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
    return labels


def _constant(codes: torch.Tensor) -> bool:
    """True when every row has the same code (training collapsed it)."""
    return bool((codes.amax(dim=0) == codes.amin(dim=0)).all())


@hookimpl
def mi_probe_register_estimators(register):
    register("lmi", LMIEstimator, LMIParams)
