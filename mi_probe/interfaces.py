"""Protocols and result types shared by the engine and every plugin.

This module imports nothing from mi_probe, so a third-party plugin can depend on it
(and on ``errors`` and ``hookspecs``) without pulling in the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Final, Iterable, Mapping, Protocol,
                    Sequence, runtime_checkable)

if TYPE_CHECKING:  # annotations only; none of these is imported at run time (so
    # ``mi-probe plugins`` and ``schema``, which import this module, do not load torch)
    import polars as pl
    import torch
    from pydantic import BaseModel
    from torch import nn
    from torch.utils.hooks import RemovableHandle
    from pathlib import Path

#: Names of the model states every experiment can ask for. ``epoch_<n>`` states are
#: produced by training-dynamics experiments.
TRAINED: Final = "trained"
RANDOM: Final = "random"


@dataclass(frozen=True)
class SiteRef:
    """A named activation an adapter offers: the output of ``module`` (dotted path)."""

    name: str
    module: str
    kind: str
    #: channel count if the adapter knows it (else found by a probe forward pass)
    channels: int | None = None
    #: which element of a tuple/list output is the site (blocks that return several
    #: streams, e.g. TNT's (pixel, patch) pair); 0 for a plain tensor
    index: int = 0
    #: leading tokens of an ``nlc`` output that are not patches (class, distillation,
    #: register tokens); pooling never mixes them with the patch tokens
    prefix_tokens: int = 0
    #: the block (unit of the main stream) the site belongs to; None: the name up to
    #: its last dot for ``pre_add``/``post_add`` sites, else the site itself
    block: str | None = None


#: Site kinds that are the main stream after a unit (what ``kinds: [output]`` selects).
OUTPUT_KINDS = ("post_add", "block", "post_act", "stage")


@dataclass(frozen=True)
class Site:
    """A resolved site: a :class:`SiteRef` plus its channel count, 0-based depth and the
    layout of the hooked output (``nchw``, ``nhwc``, ``nlc`` tokens, or ``nc``).

    ``depth`` is the site's index among ALL the sites the adapter lists for the model
    (forward order), whatever the spec selects, so ``layer4.0.post_add`` has one depth
    in every run of a model and runs that select different sites line up;
    ``rel_depth`` = depth / (number of the model's sites - 1), in [0, 1] (0.0 for a
    model with one site), lines up runs of models with different site counts."""

    name: str
    module: str
    kind: str
    channels: int
    depth: int
    layout: str = "nchw"
    #: element of a tuple/list output that is the site (see ``SiteRef.index``)
    index: int = 0
    #: leading non-patch tokens of an ``nlc`` output
    prefix_tokens: int = 0
    #: how an ``nlc`` output pools to one vector per sample: ``patch_mean`` (the mean
    #: of the patch tokens, prefix tokens left out) or ``cls`` (the first prefix token)
    tokens: str = "patch_mean"
    #: stage (0-based run of blocks at one resolution) and position of the site's
    #: block among all blocks of the model (0 first, 1 last); None for the stem
    stage: int | None = None
    position: float | None = None
    #: depth / (the model's site count - 1), set by site resolution; a hand-built Site
    #: (tests, helpers) that does not say keeps 0.0
    rel_depth: float = 0.0


@dataclass
class DataBundle:
    """What a data source returns: a training set, the evaluation (validation) set in a
    fixed order without augmentation, and the class names (index = label).

    ``selection``, when a source has one, is a third set of images, disjoint from both,
    that chooses the checkpoint and stops training early; the evaluation set is then
    used only for analysis (MI, channel ranking, interventions), never to choose the
    model it analyses. Without it the evaluation set plays both roles.

    ``warnings``: what the source found odd but usable (e.g. a class with one evaluation
    image); the run reports them in ``run.json``, ``index.html`` and on stderr."""

    train: torch.utils.data.Dataset[Any]
    val: torch.utils.data.Dataset[Any]
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)
    selection: torch.utils.data.Dataset[Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def selection_set(self) -> torch.utils.data.Dataset[Any]:
        """The images that choose the checkpoint: ``selection``, else ``val``."""
        return self.val if self.selection is None else self.selection

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class Captured:
    """Pooled activations of the evaluation set: ``acts[site]`` is (N, C) float32 on the
    capture device, ``labels`` is (N,) int64, ``logits`` is (N, K) or None."""

    acts: dict[str, torch.Tensor]
    labels: torch.Tensor
    logits: torch.Tensor | None = None
    #: the sites whose activations are in ``acts``, in forward order
    sites: list[Site] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        if self.logits is None:
            raise ValueError("no logits were captured")
        return (self.logits.argmax(1) == self.labels).float().mean().item()


@dataclass(frozen=True)
class LayerMI:
    """Layer-level values in nats (``i_xt`` None when not estimated)."""

    i_xt: float | None
    i_ty: float


@dataclass(frozen=True)
class Entry:
    """One registered thing: ``factory(params)`` builds it; ``params_model`` is the
    pydantic model (with ``kind: Literal[name]``) that validates its spec section."""

    kind: str
    name: str
    factory: Callable[[Any], Any]
    params_model: type[BaseModel]
    plugin: str


class Register(Protocol):
    """The callback every ``mi_probe_register_*`` hook receives."""

    def __call__(self, name: str, factory: Callable[[Any], Any],
                 params_model: type[BaseModel]) -> None: ...


@runtime_checkable
class Adapter(Protocol):
    """Knows where the sites of a family of models are."""

    name: str

    def claims(self, model: nn.Module, arch: str) -> bool:
        """True when this adapter understands ``model``."""

    def site_refs(self, model: nn.Module) -> list[SiteRef]:
        """Every site of ``model`` in forward order."""

    # Optional abilities, each a protocol below, checked with isinstance:
    # HasSuffix, HasProducers, HasSkipGainHooks.


@runtime_checkable
class HasSuffix(Protocol):
    """Adapter ability: the rest of the network as a function of a site's output."""

    def suffix(self, model: nn.Module, site: Site) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Logits from the site's output; the engine then evaluates interventions on a
        cached site output without re-running the layers before the site. None means
        full forward passes for that site."""


@runtime_checkable
class HasProducers(Protocol):
    """Adapter ability (``transplant``): the parameters that produce a site's channels."""

    def producers(self, model: nn.Module, site: Site) -> list[tuple[str, str]]:
        """(module path, role) pairs whose out-channel rows make the site's channels;
        roles: ``conv``, ``linear``, ``norm``."""


@runtime_checkable
class HasSkipGainHooks(Protocol):
    """Adapter ability (``skip_gain``): scale a residual block's shortcut."""

    def skip_gain_hooks(self, model: nn.Module, block_path: str, gain: float
                        ) -> list[RemovableHandle]:
        """Hooks (registered; the caller removes them) that make the block compute
        act(residual + gain · shortcut)."""

    @staticmethod
    def block_path(site: Site) -> str | None:
        """The residual block a site belongs to (None: not in one)."""


@runtime_checkable
class Estimator(Protocol):
    """Estimates MI between pooled activations and labels / inputs, batched over channels.

    All tensors stay on the device they arrive on; results are float64 tensors in nats.
    """

    name: str
    #: layer reductions this estimator implements besides ``mean``
    reductions: frozenset[str]

    def label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-channel I(T_c;Y) for ``acts`` (N, C) and integer ``labels`` (N,): shape (C,)."""

    def input_mi(self, acts: torch.Tensor) -> torch.Tensor | None:
        """Per-channel I(X;T_c) under the estimator's documented convention: shape (C,).
        None when the estimator does not estimate it (tables then hold null)."""

    def layer_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                 reduce: str) -> LayerMI:
        """Layer-level I(X;T) and I(T;Y) with the given reduction."""

    def bias(self, n_samples: int, num_classes: int) -> float:
        """Expected upward bias of one per-channel I(T_c;Y) value on independent data,
        in nats (0.0 when the estimator has no known figure)."""

    def describe(self) -> dict[str, Any]:
        """JSON-able facts to store with every result (caps, bins, conventions)."""

    # Optional abilities, each a protocol below, checked with isinstance:
    # PairMI (layer_pairs), Diagnoses and DiagnosesLabels (diagnostics.parquet), Binned
    # (cover), Prepares (one site's quantities from one shared state), Streams (Prepares
    # from row chunks: sites in the activation store, never the whole matrix), Intervals
    # and JointMIIntervals (confidence intervals), JointMI (bench-estimators),
    # VectorLabelMI (unpooled sites).


@runtime_checkable
class PairMI(Protocol):
    """Estimator ability (``layer_pairs``): MI between every channel pair of two layers."""

    def pair_mi(self, acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
        """(C1, C2) float64 I(A_c; B_d) of two (N, C) matrices with the same samples."""


@runtime_checkable
class Diagnoses(Protocol):
    """Estimator ability: facts that qualify one site's values (``diagnostics.parquet``)."""

    def diagnostics(self, acts: torch.Tensor) -> dict[str, Any]:
        """JSON-able facts about one site's (N, C) activations, one table row."""


@runtime_checkable
class Prepares(Protocol):
    """Estimator ability: do the work shared by every quantity of one site's (N, C)
    activations once (the histogram: ranges and bin codes), then answer each quantity
    from that state. ``layer_mi`` asks one site for label MI, input MI, several
    shuffled-label nulls and diagnostics; ``analysis.prepare_site`` uses this ability when
    an estimator has it and the per-quantity methods when it does not.

    Each ``*_prepared`` answer must equal its per-quantity method on the prepared
    ``acts`` (the built-in histogram: bit for bit). The state is opaque to callers,
    belongs to this estimator and those ``acts``, and is used in one process."""

    def prepare(self, acts: torch.Tensor) -> Any:
        """The state of one site's (N, C) activations (raises as ``label_mi`` would on
        activations it refuses)."""

    def label_mi_prepared(self, state: Any, labels: torch.Tensor, num_classes: int
                          ) -> torch.Tensor:
        """``label_mi(acts, labels, num_classes)``; called with many label vectors."""

    def input_mi_prepared(self, state: Any) -> torch.Tensor | None:
        """``input_mi(acts)``."""

    def diagnostics_prepared(self, state: Any) -> dict[str, Any]:
        """``diagnostics(acts)`` for an estimator that ``Diagnoses``, else ``{}``."""


@runtime_checkable
class Streams(Prepares, Protocol):
    """Estimator ability: a ``Prepares`` state of one site read in row chunks (the
    activation store keeps captures on disk in row blocks), in memory bounded by one
    chunk plus the estimator's own tables (the histogram: its C x bins x classes
    counts), never the (N, C) matrix.

    ``chunks`` is a zero-argument callable returning a fresh iterator over the site's
    consecutive (n_i, C) row blocks in order, from the first row on every call; each
    answer reads them once or more. ``prepare_stream`` returns a state the ``Prepares``
    methods accept, and each answer must equal the per-quantity method on the whole
    matrix (the built-in histogram: bit for bit; ``pair_mi_streamed`` to float64
    rounding). Settings that cannot stream say why in ``cannot_stream``; the caller
    then loads the matrix and uses ``prepare``. The state is opaque, belongs to this
    estimator and those chunks, and is used in one process."""

    def cannot_stream(self) -> str | None:
        """None when the estimator's current settings stream; else why they do not."""

    def prepare_stream(self, chunks: Callable[[], Iterable[torch.Tensor]], n_rows: int,
                       n_channels: int) -> Any:
        """The state of one site read in chunks of ``n_channels`` columns, ``n_rows``
        rows in all (raises as ``prepare`` would on values it refuses, and on chunks
        that do not match those sizes)."""

    def label_mi_streamed(self, state: Any, labels: Sequence[torch.Tensor],
                          num_classes: int) -> list[torch.Tensor]:
        """``label_mi_prepared`` for each (N,) label vector (the labels and the
        shuffled-label nulls of ``layer_mi``), read in one pass over the chunks."""

    def pair_mi_streamed(self, state_a: Any, state_b: Any) -> torch.Tensor:
        """``pair_mi`` (``PairMI``) of two sites' matrices with the same rows, from
        their ``prepare_stream`` states (the same state twice: a site with itself)."""


@runtime_checkable
class Binned(Protocol):
    """Estimator ability (``cover``): a per-channel uniform binning, so that channel
    pairs can be counted on the estimator's own codes."""

    bins: int
    #: None: each channel's min/max; else the tail share clipped at each end
    quantile: float | None


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval, in nats. The tensors are
    float64 and share one shape: (C,) per channel, or 0-d for one value."""

    estimate: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    #: nominal coverage, e.g. 0.95
    level: float
    #: how it was made: ``bootstrap``, ``subsample`` or ``kfold`` (see docs/estimators.md)
    method: str


@runtime_checkable
class Intervals(Protocol):
    """Estimator ability: confidence intervals for its per-channel label MI, by a method
    that is valid for it (a naive bootstrap is not valid for KSG: resampled duplicates
    sit at distance 0). ``layer_mi``'s ``interval`` parameter writes them as
    ``*_ci_low`` / ``*_ci_high`` columns."""

    #: ``bootstrap``, ``subsample`` or ``kfold``
    interval_method: str

    def label_mi_interval(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int,
                          level: float, seed: int) -> tuple[Interval, Interval]:
        """Intervals of I(T_c;Y) per channel ((C,) tensors) and of their mean over the
        channels (0-d tensors; the site's ``i_ty``), from resamples shared by every
        channel. ``estimate`` equals ``label_mi`` and its mean."""


@runtime_checkable
class JointMI(Protocol):
    """Estimator ability (``bench-estimators``; unpooled layers): I(X;Y) of two
    continuous multivariate variables from paired rows, as in bmi's benchmark."""

    #: the largest dim_x + dim_y it accepts (None: any); larger inputs raise
    #: ``EstimatorError`` naming the limit
    max_joint_dims: int | None

    def joint_mi(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """I(X;Y) in nats of (N, dx) and (N, dy) float samples (row i of x pairs with
        row i of y)."""


@runtime_checkable
class JointMIIntervals(Protocol):
    """Estimator ability: a confidence interval for ``joint_mi`` (bench coverage)."""

    interval_method: str

    def joint_mi_interval(self, x: torch.Tensor, y: torch.Tensor, level: float, seed: int
                          ) -> Interval:
        """0-d interval whose ``estimate`` equals ``joint_mi(x, y)``."""


@runtime_checkable
class VectorLabelMI(Protocol):
    """Estimator ability (sites with ``reduce: none``): I(T;Y) of a whole layer's
    (N, D) representation, D = C·H·W or a declared projection of it, and integer
    labels, with no pooling to channels."""

    #: the largest D it accepts (None: any)
    max_dims: int | None

    def vector_label_mi(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                        ) -> float:
        """I(T;Y) in nats of (N, D) activations and (N,) integer labels."""


@runtime_checkable
class DiagnosesLabels(Protocol):
    """Estimator ability: facts about how its discretisation of one site relates to the
    labels (the histogram: the share of the label entropy Ĥ(Y) that the binned channels
    and the binned layer explain; near 1 means the bins identify the images), added to
    the site's ``diagnostics.parquet`` row."""

    def label_diagnostics(self, acts: torch.Tensor, labels: torch.Tensor, num_classes: int
                          ) -> dict[str, Any]:
        """JSON-able columns for one site's (N, C) activations and (N,) labels."""


@runtime_checkable
class ExplainsEstimates(Protocol):
    """Estimator ability: sentences for the report that qualify its values here (its
    bias at this sample size, saturation, constant channels), from the merged tables."""

    def notes(self, n_samples: int, num_classes: int, tables: Mapping[str, pl.DataFrame]
              ) -> list[str]:
        """Notes shown in index.html and stored in run.json, after the estimator's
        settings."""


@runtime_checkable
class Regularizer(Protocol):
    """A training-loss term computed from pooled activations of chosen sites."""

    name: str
    #: fnmatch patterns of the sites whose (non-detached) pooled activations it needs
    site_patterns: Sequence[str]

    def penalty(self, pooled: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """A scalar added to the cross-entropy loss (negative values reward)."""


@runtime_checkable
class Intervention(Protocol):
    """Changes a site's output during evaluation; applied as a forward hook (or to a
    cached site output) and always removed afterwards.

    The engine calls ``reset(generator)`` before each evaluation; when
    ``needs_calibration`` is true it first streams the unmodified evaluation set
    through ``calibrate`` (e.g. to learn channel statistics or the values a shuffle
    draws from), then applies ``__call__``. ``start`` is the position of the batch's
    first sample in the evaluation order.

    Optional attribute ``row_wise`` (default False): True declares that each image's
    result depends on that image alone (no randomness, no calibration), so a sweep may
    score it on a subset of images and stack several interventions into one suffix pass
    (``RunContext.evaluate_points``); the built-in ``knockout`` and ``energy`` are.
    """

    name: str
    #: the label written to result tables (``plain`` for a zeroing knockout)
    variant: str
    needs_calibration: bool

    def reset(self, generator: torch.Generator) -> None: ...

    def calibrate(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                  start: int) -> None: ...

    def __call__(self, output: torch.Tensor, site: Site, channels: torch.Tensor,
                 start: int) -> torch.Tensor:
        """Return the modified output for the chosen ``channels`` (1-D index tensor)."""


@dataclass
class SweepPoint:
    """One intervention to score at a site (``RunContext.evaluate_points``): its
    ``channels``, scored on evaluation rows ``score`` (None: all), its randomness from
    ``generator`` (None: a fixed seed)."""

    intervention: Intervention
    channels: torch.Tensor
    score: torch.Tensor | None = None
    generator: torch.Generator | None = None


@dataclass
class PointResult:
    """A scored sweep point: ``correct`` per row of ``rows`` (the evaluation rows used,
    in the order they were visited); with a sequential rule, the paired interval of its
    drop (``functional.sequential.PairedDrop``) and whether it stopped before its last
    row."""

    rows: torch.Tensor
    correct: torch.Tensor
    interval: Any = None
    stopped_early: bool = False


@runtime_checkable
class Metric(Protocol):
    """Summarises a per-channel value vector of one site into named numbers."""

    name: str

    def __call__(self, values: torch.Tensor) -> dict[str, float]: ...


@runtime_checkable
class DataSource(Protocol):
    """Builds the train / evaluation data."""

    def load(self) -> DataBundle: ...


@runtime_checkable
class ChecksSource(Protocol):
    """Optional ability of a data source: refuse a location that cannot hold its data
    cheaply (paths and folder names, never decoding), so ``mi-probe validate`` and the
    start of ``run`` catch a wrong ``data.root`` before anything is trained."""

    def check_source(self) -> None:
        """Raise ``DataError`` naming the path, what was expected and what was found."""


@runtime_checkable
class RunContext(Protocol):
    """What the engine hands an experiment: everything a built-in experiment uses, so a
    third-party experiment has exactly the same powers."""

    spec: Any
    device: torch.device
    num_classes: int
    class_names: list[str]
    estimator: Estimator

    def model(self, seed: int, state: str) -> nn.Module:
        """The model for ``seed`` in ``state`` (``trained`` or ``random``), in eval mode."""

    def adapter(self, model: nn.Module) -> Adapter:
        """The site adapter of ``model`` (the spec's ``sites.adapter``, or the first
        that claims it through ``mi_probe_resolve_adapter``), for its optional abilities
        (``HasProducers``, ``HasSkipGainHooks``, ...)."""

    def sites(self, model: nn.Module) -> list[Site]:
        """The spec's sites of ``model`` in forward order."""

    def capture(self, seed: int, state: str, need_logits: bool = True) -> Captured:
        """Pooled evaluation-set activations of every site (cached per seed and state).
        ``need_logits=False``: the caller never scores the model, so the forward pass
        may stop after the deepest site (early halt; ``logits`` may then be None)."""

    def evaluate(self, model: nn.Module,
                 interventions: Iterable[tuple[Site, Intervention, torch.Tensor]] = (),
                 subset: torch.Tensor | None = None, sites: Sequence[Site] = (),
                 generator: torch.Generator | None = None) -> Captured:
        """Evaluation-set logits (and pooled ``sites``) with the interventions applied;
        ``subset`` restricts to those evaluation indices (in that order); ``generator``
        seeds the interventions' randomness (shuffle order, noise)."""

    def evaluate_points(self, model: nn.Module, site: Site, points: Sequence[SweepPoint], *,
                        sites: Sequence[Site] = (),
                        correct_before: torch.Tensor | None = None,
                        rule: Callable[[int], Any] | None = None,
                        order: Callable[[torch.Tensor], torch.Tensor] | None = None
                        ) -> list[PointResult]:
        """Score many interventions at one ``site`` (a sweep): each point's correctness
        on its score rows, in order. Row-wise interventions run from the site's stored
        output through the suffix only, on their own rows, several per pass; others as
        one ``evaluate`` each. ``sites``: the sweep's other sites (their outputs are
        written in the same forward pass). With ``rule`` (a point's row count ->
        ``functional.sequential.SequentialRule``), ``correct_before`` (the untouched
        model's correctness per evaluation row) and ``order`` (rows -> visiting order),
        a point stops early and carries its paired interval."""

    def plugin(self, kind: str, name: str, **params: Any) -> Any:
        """Build the registered ``kind`` entry ``name`` (e.g. an intervention) with
        ``params`` (validated by its params model; a bad name or value is a SpecError)."""

    def train(self, seed: int, *, model_overrides: dict[str, Any] | None = None,
              regularizers: Sequence[Any] | None = None,
              track: Callable[[nn.Module, int], dict[str, Any]] | None = None,
              track_key: str | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train (or load from the model cache) a variant of the spec's model: other
        model fields, other regularisers, and a ``track(model, epoch)`` callback whose
        results are stored per epoch in the returned history (``tracked``)."""

    def rng(self, seed: int, purpose: str) -> torch.Generator:
        """A CPU generator seeded from the run seed and a purpose string."""

    def progress(self, message: str) -> None:
        """Report progress to the user."""


@dataclass(frozen=True)
class Plan:
    """What ``Experiment.plan`` decided, and all that ``run_unit`` may use besides the
    spec: the unit names and JSON-serialisable ``settings``. It travels in a worker's
    payload, so a unit runs the same in this process, in another, or on another node."""

    units: tuple[str, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"units": list(self.units), "settings": dict(self.settings)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Plan":
        return cls(tuple(data["units"]), dict(data.get("settings", {})))


@runtime_checkable
class Experiment(Protocol):
    """An analysis. The engine calls ``plan`` once, ``run_unit`` for each unit not
    already finished (results of finished units survive interruption), then
    ``finalize`` over the merged tables, then ``figures`` to draw them.

    ``run_unit`` must not rely on anything ``plan`` stored on the experiment: a worker
    process builds a fresh experiment and calls ``run_unit`` with the plan alone."""

    name: str

    def plan(self, ctx: RunContext) -> Plan:
        """Validate against the run and name the units (the built-ins: one per seed,
        ``seed=<n>``); anything run_unit needs beyond the spec goes in ``settings``."""

    # Optional: ``trainings(ctx) -> list[TrainingRequest]``, the models the units will
    # ask ``ctx.train`` for. The engine trains them first, as independent units of the
    # training stage (in parallel on a cluster executor). Without it, the engine
    # assumes one model of the spec per seed when ``model.weights`` is ``train`` and
    # the experiment measures the trained state.

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        """Tables (name -> polars DataFrame) for one unit of ``plan``."""

    def finalize(self, ctx: RunContext | None, tables: dict[str, pl.DataFrame]
                 ) -> dict[str, pl.DataFrame]:
        """Extra tables (e.g. ``summary_*``) computed from the merged per-unit tables."""

    def figures(self, tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
        """Altair charts by name, drawn from the tables alone (so reports can be re-drawn)."""


@runtime_checkable
class DeclaresTrainings(Protocol):
    """Experiment ability: the models its units will ask ``ctx.train`` for."""

    def trainings(self, ctx: RunContext) -> list[TrainingRequest]:
        """The engine trains these first, as units of the training stage."""


@runtime_checkable
class HasNotes(Protocol):
    """Experiment ability: sentences for the report, from the merged tables."""

    def notes(self, tables: Mapping[str, pl.DataFrame]) -> list[str]:
        """Notes shown in index.html and stored in run.json."""


@dataclass(frozen=True)
class TableSchema:
    """The columns of one result table: ``required`` ones are always there (checked
    when the run merges the table); ``optional`` ones appear with some settings.
    ``open``: other columns may appear too (e.g. named by plugins), so a claim about an
    undeclared column is only checked once the table exists."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    open: bool = False

    @property
    def columns(self) -> tuple[str, ...]:
        return self.required + self.optional


def as_schema(declared: "TableSchema | Sequence[str]") -> TableSchema:
    """A declared schema; a plain column list means required columns, open to more."""
    if isinstance(declared, TableSchema):
        return declared
    return TableSchema(tuple(declared), open=True)


@runtime_checkable
class DeclaresTables(Protocol):
    """Experiment ability: the contract of the tables it writes (per-seed and helper
    tables; derived ``summary_*`` tables need not be named). Every named table is
    checked, when the run merges it, to hold its required columns; ``mi-probe validate``
    and the start of a run refuse a ``checks:`` claim about a table the experiment does
    not name, or about a column a closed schema does not have."""

    #: table name -> TableSchema (or a list of required columns, open to more)
    table_schemas: Mapping[str, "TableSchema | Sequence[str]"]


@runtime_checkable
class ChecksSpec(Protocol):
    """Optional ability of an experiment: refuse a spec it cannot run, from the spec and
    the spec's estimator alone (no data, no model), so ``mi-probe validate`` and the start
    of ``run`` catch it before anything is trained."""

    def check_spec(self, spec: Any, estimator: Estimator) -> None:
        """Raise ``SpecError`` naming the field, what was expected and what was found."""


# ----------------------------------------------------------------------------- scale-out


@dataclass(frozen=True)
class TrainingRequest:
    """One model an experiment needs trained: the arguments of ``RunContext.train``.
    Each request is one unit of the training stage."""

    seed: int
    model_overrides: Mapping[str, Any] = field(default_factory=dict)
    #: regulariser params (dicts with ``kind``); None keeps the spec's list
    regularizers: Sequence[Any] | None = None
    track: Callable[[nn.Module, int], dict[str, Any]] | None = None
    track_key: str | None = None

    @property
    def label(self) -> str:
        """A readable unit name, e.g. ``train/seed=0,act=tanh,reg=hsic`` (the engine adds
        the cache key where two different models would share one)."""
        parts = [f"seed={self.seed}"]
        parts += [f"{k}={v}" for k, v in sorted(self.model_overrides.items())]
        if self.regularizers is not None:
            kinds = [r["kind"] if isinstance(r, Mapping) else getattr(r, "kind", str(r))
                     for r in self.regularizers]
            parts.append("reg=" + ("+".join(kinds) or "none"))
        if self.track_key is not None:
            parts.append("tracked")
        return "train/" + ",".join(parts)


@dataclass
class StageJobs:
    """The independent units of one stage (``train`` or ``analysis``) that an executor
    must run. Each unit can run here (``run_here(unit)``, with the driver's engine) or
    in another process or machine: ``entry(payload(unit))``, where ``entry`` is a
    module-level function (picklable by reference) and the payload is JSON-able. A
    unit's results land in the shared run directory or model cache, never in the
    return value, so finished units survive any failure."""

    stage: str
    units: list[str]
    run_here: Callable[[str], None]
    payload: Callable[[str], dict[str, Any]]
    entry: Callable[[dict[str, Any]], dict[str, Any]]
    log: Callable[[str], None]


@runtime_checkable
class Executor(Protocol):
    """Runs the units of a stage: ``local`` in this process one by one; ``ray`` as Ray
    tasks. Returns ``{unit: message}`` for units that failed after the executor's
    retries (an empty dict when all finished)."""

    name: str

    def run(self, jobs: StageJobs) -> dict[str, str]: ...

    def close(self) -> None:
        """Release what ``run`` acquired (e.g. a Ray instance this executor started)."""


@runtime_checkable
class Tracker(Protocol):
    """A live tracking sink (``track:`` in a spec; ``tensorboard``, ``mlflow``): told
    when the run starts, sent every training epoch's values as the epoch ends, then the
    finished run's tables and figures, then the run's status. ``run`` is a
    ``mi_probe._core.tracking.TrackedRun`` (run_dir, name, spec, metadata, params: the
    spec as dotted keys); ``values``
    are ``{name: float}`` with ``/``-grouped names (``val/acc``, ``i_ty/<site>``);
    ``label`` names the training (``seed0``, ``seed0-tanh``)."""

    def start(self, run: Any) -> None: ...

    def log_epoch(self, label: str, epoch: int, values: Mapping[str, float]) -> None: ...

    def log_results(self, run_dir: Path, tables: Mapping[str, Any],
                    figures: Sequence[Path]) -> None: ...

    def close(self, status: str) -> None: ...
