"""Experiment specs: pydantic models whose plugin unions are assembled from the
registry, loaded from YAML with ``yaml.safe_load`` semantics and located errors.

``load_spec(path, overrides)`` returns a validated spec or raises ``SpecError`` whose
problems read ``file:line: field.path: message (got value); valid: ...; did you mean``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Mapping, Sequence, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      create_model, field_validator, model_validator)

from mi_probe._core.archs import is_custom_arch
from mi_probe._core.checks import Check
from mi_probe.errors import SpecError

# --------------------------------------------------------------------------- models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainSpecBase(_Strict):
    """The paper's recipe: SGD + momentum + weight decay, ReduceLROnPlateau on validation
    accuracy, early stopping on validation accuracy; the best-accuracy epoch is kept."""

    if TYPE_CHECKING:  # added by build_spec_model (a union of the registered regularisers)
        regularizers: list[Any]

    epochs: int = Field(15, description="maximum training epochs (at least 1: the initial "
                        "weights are the random state, not a trained one)",
                        json_schema_extra={"minimum": 1})
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0, description="initial SGD learning rate")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5.0e-4, ge=0)
    plateau_patience: int = Field(10, ge=0, description="ReduceLROnPlateau patience (epochs)")
    plateau_factor: float = Field(0.1, gt=0, lt=1, description="LR multiplier on a plateau")
    early_stop_patience: int = Field(25, ge=1, description="stop after this many epochs "
                                     "without a new best validation accuracy")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")

    @field_validator("epochs")
    @classmethod
    def _at_least_one_epoch(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"epochs must be at least 1, got {value}: with no training the "
                             "'trained' state would be the initial weights. To measure "
                             "initial weights, use the random state (experiment states: "
                             "[random], or model.weights: random)")
        return value


class ModelSpecBase(_Strict):
    if TYPE_CHECKING:  # added by build_spec_model (its regularizers come from plugins)
        train: TrainSpecBase

    arch: str = Field(description="any timm architecture name, e.g. resnet18, vgg16; or "
                      "your own model: package.module:function, a function in your code "
                      "that returns an nn.Module (called with num_classes when it takes "
                      "it); python:<name> is a model handed to mi_probe.run(model=...)")
    num_classes: int | None = Field(None, ge=2, description="defaults to the data's classes")
    weights: str = Field("train", description="train (train the model per seed) | random | "
                         "path/to/model.safetensors | pretrained (timm's default pretrained "
                         "weights for arch, with a new head for the data's classes) | a timm "
                         "hub tag <arch>.<tag>, e.g. resnet50.a1_in1k")
    pretrained_file: str | None = Field(
        None, description="with weights: pretrained or a tag, load timm's weights from this "
        "local .safetensors file instead of downloading them (offline machines)")
    act: Literal["relu", "tanh"] | None = Field(
        None, description="swap every activation of the network to this one (None: as built)")
    head: Literal["timm", "paper_vgg"] = Field(
        "timm", description="paper_vgg: global average pool, Linear(4096), ReLU, "
        "Dropout(0.5), Linear(num_classes) (VGG models only)")
    zero_init_last: bool = Field(
        False, description="keep timm's zero init of each residual block's last norm weight. "
        "False (default, like torchvision) resets such zero norm weights to one, so a "
        "freshly initialised ResNet's pre_add sites are not constant zero")

    @field_validator("weights")
    @classmethod
    def _weights_kind(cls, value: str) -> str:
        if value in ("random", "train", "pretrained") or value.endswith(".safetensors"):
            return value
        pickled = value.lower().endswith((".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle",
                                          ".tar"))
        if not pickled and re.fullmatch(r"[A-Za-z0-9_]+\.[A-Za-z0-9_]+", value):
            return value  # a timm hub tag, checked against arch below
        raise ValueError(f"expected 'random', 'train', 'pretrained', a timm tag such as "
                         f"'resnet50.a1_in1k' or a path to a .safetensors file, got {value!r} "
                         "(pickled checkpoints such as .pt/.pth are never loaded)")

    @field_validator("pretrained_file")
    @classmethod
    def _pretrained_file_kind(cls, value: str | None) -> str | None:
        if value is not None and not value.endswith(".safetensors"):
            raise ValueError(f"expected a .safetensors file, got {value!r} (pickled "
                             "checkpoints such as .pt/.pth are never loaded)")
        return value

    @model_validator(mode="after")
    def _pretrained_fits(self) -> "ModelSpecBase":
        tagged = pretrained_tag(self.weights)
        if tagged is not None and tagged[0] not in (self.arch, ""):
            raise ValueError(f"weights {self.weights!r} are a tag of {tagged[0]!r}, but arch "
                             f"is {self.arch!r}; use weights: pretrained, or arch: "
                             f"{tagged[0]}")
        if tagged is not None and is_custom_arch(self.arch):
            raise ValueError(f"weights {self.weights!r}: arch {self.arch!r} is your own model, "
                             "and timm's pretrained weights are for timm names; use "
                             "weights: train, random or a .safetensors file")
        if self.pretrained_file is not None and tagged is None:
            raise ValueError(f"pretrained_file is only used with weights: pretrained (or a "
                             f"timm tag); weights is {self.weights!r}")
        return self


def pretrained_tag(weights: str) -> tuple[str, str] | None:
    """(arch, tag) of pretrained weights (``("", "")`` for timm's default), else None."""
    if weights == "pretrained":
        return "", ""
    if weights in ("random", "train") or weights.endswith(".safetensors"):
        return None
    arch, _, tag = weights.partition(".")
    return arch, tag


class SiteReduceSpec(_Strict):
    """A site kept whole instead of average-pooled per channel (``sites.reduce``)."""

    project: int | None = Field(
        None, ge=1, description="reduce the flattened C·H·W values to this many dims by a "
        "seeded random Gaussian projection (entries N(0, 1/dims); one matrix per site, the "
        "same for every model state and seed); None keeps all C·H·W values")
    seed: int = Field(0, description="seed of the projection matrices")
    max_mb: int = Field(
        4096, ge=1, description="memory budget (MiB) of the kept activations of all "
        "selected sites together (N·D values each) plus the projection matrices; a "
        "capture that would exceed it is refused, naming what it needs")
    dtype: Literal["float32", "float16"] = Field(
        "float32", description="storage of the kept values: float16 halves the memory "
        "(about 3 significant digits; values beyond ±65504 are refused)")


#: ``sites.reduce``: how capture reduces each site's output
SITE_REDUCE_HELP = ("how each site's output is kept: mean (global average pool per "
                    "channel, (N, C); the default and the paper's), none (every C·H·W value, "
                    "flattened channel-major), or {project: <dims>} (a seeded random Gaussian "
                    "projection of the flattened values); a mapping also sets seed, max_mb "
                    "(memory budget) and dtype (float32 | float16). Only experiments that "
                    "measure whole layers (unpooled_mi) read unpooled sites")


def _site_reduce(value: Any) -> Any:
    """``sites.reduce`` as ``"mean"``, ``"none"`` or a :class:`SiteReduceSpec`."""
    if isinstance(value, SiteReduceSpec) or value in ("mean", "none"):
        return value
    if isinstance(value, dict):
        try:
            return SiteReduceSpec.model_validate(value)
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                if err["type"] == "extra_forbidden":
                    problems.append(f"{where}: unknown field; valid fields: "
                                    f"{', '.join(SiteReduceSpec.model_fields)}")
                else:
                    problems.append(f"{where}: {err['msg']}")
            raise ValueError("; ".join(problems)) from None
    raise ValueError(f"expected mean, none or a mapping such as {{project: 1024}}"
                     f"{_did_you_mean(value, ['mean', 'none'])}")


class SitesSpecBase(_Strict):
    if TYPE_CHECKING:  # added by build_spec_model (a Literal of the registered adapters)
        adapter: str

    include: list[str] = Field(["*"], min_length=1,
                               description="fnmatch patterns over site names or '*.<kind>'")
    exclude: list[str] = Field([], description="patterns removed after include")
    kinds: list[str] = Field([], description="site kinds to keep (empty: all): stem, "
                             "pre_add, post_add, block, post_act, stage, or output (every "
                             "kind that is the main stream after a block: post_add, block, "
                             "post_act, stage); works on every architecture")
    position: Literal["all", "first_stage", "last_stage", "first_half", "last_half",
                      "first_third", "middle_third", "last_third", "last"] = Field(
        "all", description="where the sites' blocks lie: a stage is a run of blocks at one "
        "resolution; halves and thirds split the blocks in forward order by relative "
        "position; last is the deepest block. The stem is kept only with all")
    modules: list[str] = Field(
        [], description="sites by module name (e.g. features.1 for the output of "
        "model.features[1]), kind block, in the order given, for a model no adapter "
        "understands (your own nn.Module); replaces the adapter's list, and include, kinds "
        "and position then select among these")
    tokens: Literal["patch_mean", "cls"] = Field(
        "patch_mean", description="how a token output (ViT-like blocks) pools per sample: "
        "the mean of the patch tokens (class and register tokens left out), or the class "
        "token; never both mixed")
    reduce: Literal["mean", "none"] | SiteReduceSpec = Field("mean", description=SITE_REDUCE_HELP)

    @field_validator("reduce", mode="before")
    @classmethod
    def _reduce_choice(cls, value: Any) -> Any:
        return _site_reduce(value)


class EvalSpec(_Strict):
    batch_size: int = Field(default=256, ge=1)
    max_samples: int | None = Field(default=None, ge=2, description="use only n evaluation "
                                    "samples, evenly spaced over the set so that a set "
                                    "listed class by class keeps every class (None: all)")
    site_cache_mb: int = Field(
        default=2048, ge=0, description="memory (MB, on the model's device) for caching one "
        "site's full evaluation-set output, so interventions there re-run only the layers "
        "after the site; 0 always re-runs the whole network (and never reads site "
        "outputs from the activation store)")
    site_store_mb: int = Field(
        default=8192, ge=0, description="largest full site output (MB over the evaluation "
        "set) a knockout sweep writes to the activation store; a larger one is held in "
        "memory under site_cache_mb, else its interventions run whole forward passes; 0 "
        "stores none")
    sweep_pass_rows: int = Field(
        default=512, ge=0, description="rows (images x interventions) of one suffix pass "
        "when a knockout sweep stacks several interventions of a site into one pass: "
        "max(1, sweep_pass_rows // eval.batch_size) interventions per pass. On a CPU "
        "about 512 is fastest (benchmarks/README.md, bench_knockout_sweep.py); a GPU "
        "gains from more. Changes speed and memory, not results")
    stream_mb: int = Field(
        default=2048, ge=0, description="layer_mi: a capture whose pooled activations "
        "(N x channels of every site x 4 bytes) exceed this many MB is not held in memory: "
        "it is written to the activation store batch by batch and estimated from it chunk "
        "by chunk, when the estimator streams (the histogram with uniform bins; "
        "docs/store.md, 'Streaming'). 0: always stream. Needs the store; changes memory, "
        "not results")
    on_nonfinite: Literal["error", "skip"] = Field(
        default="error", description="a site with NaN/Inf activations stops the run (error) "
        "or is left out of the tables with a warning (skip)")


class ReportSpec(_Strict):
    formats: list[Literal["png", "html", "svg"]] = Field(default=["png", "html"],
                                                         min_length=1)


class StoreSpec(_Strict):
    """Where plain captures of a model state are kept for reuse (docs/store.md)."""

    enabled: bool = Field(default=True, description="read plain captures of a model state from the "
                          "activation store when stored, and write new ones")
    path: str | None = Field(default=None, min_length=1, description="folder or fsspec URL "
                             "(s3://..., file://...) of the store; default <cache>/activations; "
                             "MI_PROBE_STORE overrides")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec "
                                            "options for a URL (credentials, endpoint)")


class SpecBase(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                      description="run name; reports go to reports/<name>/<timestamp>/")
    description: str = ""
    seeds: list[int] = Field([0], min_length=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval: EvalSpec = EvalSpec()
    report: ReportSpec = ReportSpec()
    store: StoreSpec = Field(default=StoreSpec(), description="the activation store: where captures "
                             "are kept for later runs (not part of a run's identity)")
    checks: list[Check] = Field([], description="declarative claims over the result "
                                "tables (trend, compare, bound); see mi_probe/_core/checks.py")

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds must be distinct, got {value}")
        return value

    @field_validator("experiment", check_fields=False)
    @classmethod
    def _reads_unpooled_sites(cls, value: Any, info: ValidationInfo) -> Any:
        """An experiment sees unpooled sites only when its params model says it reads
        them (``reads_unpooled_sites = True``, a class attribute): the others treat every
        column of a site as a channel."""
        sites = info.data.get("sites")
        reduce = getattr(sites, "reduce", "mean")
        if reduce != "mean" and not getattr(type(value), "reads_unpooled_sites", False):
            shown = reduce if isinstance(reduce, str) else reduce.model_dump()
            raise ValueError(f"sites.reduce is {shown!r} (sites kept unpooled), but experiment "
                             f"{getattr(value, 'kind', value)!r} pools every site to "
                             "channels; use an experiment that measures whole layers "
                             "(kind: unpooled_mi) or remove sites.reduce (default mean)")
        return value

    if TYPE_CHECKING:  # the sections build_spec_model adds from the registry's plugins
        data: Any
        model: ModelSpecBase
        sites: SitesSpecBase
        estimator: Any
        experiment: Any
        executor: Any


#: ``list`` and ``Literal`` as plain values: the spec's plugin types are assembled at
#: runtime from the registry, which a static type checker cannot follow
_ListOf: Any = list
_LiteralOf: Any = Literal


def _union(entries: dict, what: str) -> Any:
    models = [e.params_model for e in entries.values()]
    if not models:
        def _refuse(value: Any) -> Any:
            raise ValueError(f"no plugin provides {what}")
        from pydantic import BeforeValidator
        return Annotated[dict, BeforeValidator(_refuse)]
    if len(models) == 1:
        return models[0]
    return Annotated[Union[tuple(models)], Field(discriminator="kind")]


def build_spec_model(registry: Any) -> type[SpecBase]:
    """The Spec model for this registry: plugin unions for data, estimator, experiment,
    regularizers and a Literal of the registered adapter names."""
    regs = _union(registry.entries("regularizers"), "regularizers")
    train_cls = create_model("TrainSpec", __base__=TrainSpecBase,
                             regularizers=(_ListOf[regs], Field([], description=(
                                 "loss terms added to cross-entropy, e.g. HSIC"))))
    model_cls = create_model("ModelSpec", __base__=ModelSpecBase,
                             train=(train_cls, Field(default_factory=train_cls)))
    adapter_names = tuple(["auto", *registry.entries("adapters")])
    sites_cls = create_model("SitesSpec", __base__=SitesSpecBase,
                             adapter=(_LiteralOf[adapter_names], Field(
                                 "auto", description="auto: first adapter that claims the model")))
    estimators = registry.entries("estimators")
    est_default: Any = ...
    if "histogram" in estimators:
        est_default = Field(default_factory=lambda: estimators["histogram"].params_model())
    executors = registry.entries("executors")
    exec_default: Any = ...
    if "local" in executors:
        exec_default = Field(default_factory=lambda: executors["local"].params_model(),
                             description="where units run: local (default) or ray; not "
                             "part of the run's identity (a run may resume on another)")
    reports = registry.entries("reports")
    writers = _union(reports, "report writers")
    report_cls = create_model("ReportSpec", __base__=ReportSpec, writers=(
        _ListOf[writers], Field([], description=(
            "extra report writers from plugins (mi_probe_register_reports), run after "
            "index.html; each entry names one by kind"))))
    trackers = _union(registry.entries("trackers"), "tracking sinks")
    return create_model(
        "Spec", __base__=SpecBase,
        report=(report_cls, Field(default_factory=report_cls)),
        track=(_ListOf[trackers], Field([], description=(
            "live tracking sinks (tensorboard, mlflow, plugins): every training epoch's "
            "values as they come, the tables and figures at the end; not part of the "
            "run's identity"))),
        executor=(_union(executors, "executors"), exec_default),
        data=(_union(registry.entries("datasets"), "datasets"), ...),
        model=(model_cls, ...),
        sites=(sites_cls, Field(default_factory=sites_cls)),
        estimator=(_union(estimators, "estimators"), est_default),
        experiment=(_union(registry.entries("experiments"), "experiments"), ...),
    )


# --------------------------------------------------------------------------- loading


def _check_duplicates(node: yaml.Node, source: str, problems: list[str]) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(f"{source}:{line}: duplicate key {key!r} (first at line {seen[key]})")
            seen.setdefault(key, line)
            _check_duplicates(value_node, source, problems)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicates(item, source, problems)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML)."""
    if "=" not in item:
        raise SpecError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise SpecError(f"--set {item!r}: empty component in key path {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise SpecError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return parts, value


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict[tuple[str, ...], str]:
    """Apply ``--set`` overrides in place; returns each overridden key path, and each key
    an override created, with the ``--set`` argument responsible (errors at or below it
    are blamed on that argument)."""
    touched: dict[tuple[str, ...], str] = {}
    for item in overrides:
        parts, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {item!r}: {'.'.join(parts[:i])} is a list of "
                                    f"{len(node)}; {part!r} is not a valid index")
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise SpecError(f"--set {item!r}: {'.'.join(parts[:i])} is not a mapping")
            if part not in node or node[part] is None:
                if part not in node:  # an unknown key the override created
                    touched.setdefault(tuple(parts[:i + 1]), item)
                node[part] = {}
            elif not isinstance(node[part], (dict, list)):
                raise SpecError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping "
                                f"(it holds {node[part]!r})")
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise SpecError(f"--set {item!r}: {last!r} is not a valid index of a list of "
                                f"{len(node)}")
            node[int(last)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise SpecError(f"--set {item!r}: {'.'.join(parts[:-1])} is not a mapping")
        touched[tuple(parts)] = item
    return touched


def _walk(data: Any, node: yaml.Node | None, loc: Sequence[Any]) -> tuple[list[str], int | None]:
    """Map a pydantic error location to a display path (union tags dropped) and the
    YAML line of the deepest node found."""
    path: list[str] = []
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
            path.append(str(part))
            if isinstance(node, yaml.MappingNode):
                found = None
                for k, v in node.value:
                    if k.value == part:
                        found = (k, v)
                if found is not None:
                    line = found[1].start_mark.line + 1 if not isinstance(
                        found[1], (yaml.MappingNode, yaml.SequenceNode)) else found[0].start_mark.line + 1
                    node = found[1]
                else:
                    node = None
        elif isinstance(data, list) and isinstance(part, int) and part < len(data):
            data = data[part]
            path.append(str(part))
            if isinstance(node, yaml.SequenceNode) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                node = None
        elif isinstance(data, dict) and data.get("kind") == part:
            continue  # a discriminated-union tag, not a field
        else:
            path.append(str(part))
    return path, line


def _model_at(spec_cls: type[BaseModel], data: Any, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The pydantic model class that owns the fields at ``loc`` (for 'valid fields')."""
    from typing import get_args, get_origin

    current: Any = spec_cls
    for part in loc:
        if isinstance(data, dict) and data.get("kind") == part and part not in data:
            continue
        if isinstance(part, int) and get_origin(current) is list:
            data = data[part] if isinstance(data, list) and part < len(data) else None
            current = _concrete(get_args(current)[0], data)
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        current = _concrete(field.annotation, data)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _concrete(annotation: Any, data: Any) -> Any:
    from typing import get_args, get_origin

    origin = get_origin(annotation)
    if origin is Annotated:
        return _concrete(get_args(annotation)[0], data)
    if origin is Union or (origin is not None and str(origin) == "types.UnionType"):
        kind = data.get("kind") if isinstance(data, dict) else None
        for arg in get_args(annotation):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                field = arg.model_fields.get("kind")
                if field is not None and field.default == kind:
                    return arg
        members = [a for a in get_args(annotation) if a is not type(None)]
        return _concrete(members[0], data) if len(members) == 1 else None
    return annotation


def _did_you_mean(value: Any, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _singular(word: str) -> str:
    """'regularizers' -> 'regularizer'; list indices and plain words pass through."""
    return word[:-1] if word.endswith("s") and not word.isdigit() else word


def _describe_error(err: Mapping[str, Any], spec_cls: type[BaseModel], data: Any,
                    path: list[str]) -> str:
    etype = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    field = ".".join(path) or "(top level)"
    if etype == "union_tag_invalid":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected_tags", "")))
        words = [p for p in path if not p.isdigit()]
        what = _singular(words[-1]) if words else ""
        return (f"{field}.kind: unknown {what} kind {ctx.get('tag')!r}; valid: "
                f"{', '.join(expected)}{_did_you_mean(ctx.get('tag'), expected)}")
    if etype == "union_tag_not_found":
        return f"{field}: missing 'kind' (which plugin to use)"
    if etype == "literal_error":
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        words = [p for p in path[:-1] if not p.isdigit()]
        what = f"{_singular(words[-1])} kind" if words and path[-1] == "kind" else "value"
        return (f"{field}: unknown {what} {value!r}; valid: {', '.join(expected)}"
                f"{_did_you_mean(value, expected)}")
    if etype == "extra_forbidden":
        owner = _model_at(spec_cls, data, err["loc"][:-1])
        valid = sorted(owner.model_fields) if owner is not None else []
        hint = f"; valid fields: {', '.join(valid)}" if valid else ""
        return f"{field}: unknown field{hint}{_did_you_mean(path[-1], valid)}"
    if etype == "missing":
        return f"{field}: required field is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{field}: {msg} (got {value!r})"


def _blamed_override(path: Sequence[str], overridden: dict[tuple[str, ...], str]) -> str | None:
    """The ``--set`` argument an error at ``path`` comes from: one that set the path or
    a field above it, or one that created the (unknown) key the error is about (created
    keys are recorded by :func:`apply_overrides`)."""
    path = tuple(path)
    for keys, item in overridden.items():
        if path[:len(keys)] == keys:
            return item
    return None


def validate_data(spec_cls: type[BaseModel], data: Any, source: str,
                  root: yaml.Node | None = None,
                  overridden: dict[tuple[str, ...], str] | None = None) -> Any:
    """Validate a spec mapping; raise SpecError with one located line per problem."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a spec must be a mapping with name, data, model and "
                        f"experiment; found {type(data).__name__}")
    try:
        return spec_cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            path, line = _walk(data, root, err["loc"])
            where = source
            blamed = _blamed_override(path, overridden or {})
            if blamed is not None:
                where = f"--set {blamed}"
            elif line is not None:
                where = f"{source}:{line}"
            problems.append(f"{where}: {_describe_error(err, spec_cls, data, path)}")
        raise SpecError(f"{source}: invalid spec ({len(problems)} problem"
                        f"{'s' if len(problems) != 1 else ''})", problems) from None


def load_spec(path: str | Path, overrides: Sequence[str] = (), pm: Any = None,
              profile: str | None = None, executor: str | None = None) -> Any:
    """Read, override and validate a YAML spec file (``profile``: see profiles.py; it
    is applied first, so ``--set`` overrides win; ``executor`` replaces the spec's
    executor block by ``{kind: executor}`` unless it already names that kind)."""
    from mi_probe._core.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"spec file {source} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read spec file {source}: {exc}") from None
    return load_spec_text(text, source, overrides, pm, profile, executor)


def load_spec_text(text: str, source: str, overrides: Sequence[str] = (), pm: Any = None,
                   profile: str | None = None, executor: str | None = None) -> Any:
    from mi_probe._core.plugins import get_plugin_manager

    pm = pm or get_plugin_manager()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: not valid YAML: {problem}") from None
    if data is None:
        raise SpecError(f"{source}: the spec is empty; expected a mapping with name, data, "
                        "model and experiment")
    problems: list[str] = []
    if root is not None:
        _check_duplicates(root, source, problems)
    if problems:
        raise SpecError(f"{source}: invalid spec", problems)
    if profile is not None:
        from mi_probe._core.profiles import apply_profile

        data = apply_profile(data, profile)
    if executor is not None and isinstance(data, dict):
        current = data.get("executor")
        if not (isinstance(current, dict) and current.get("kind") == executor):
            data["executor"] = {"kind": executor}
    overridden = apply_overrides(data, overrides) if isinstance(data, dict) else {}
    return validate_data(spec_model(pm), data, source, root, overridden)


def spec_model(pm: Any) -> type[SpecBase]:
    """The Spec model of a plugin manager (built once per manager)."""
    cached = getattr(pm, "_mi_probe_spec_model", None)
    if cached is None:
        cached = build_spec_model(pm.registry)
        pm._mi_probe_spec_model = cached
    return cached


def json_schema(pm: Any) -> dict:
    return spec_model(pm).model_json_schema()


def dump_spec(spec: BaseModel) -> str:
    """The fully resolved spec (defaults filled in) as YAML."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
