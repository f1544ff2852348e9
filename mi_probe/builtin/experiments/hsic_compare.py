"""Built-in experiment ``hsic_compare`` (paper Fig. 9): per seed, train with plain
cross-entropy and with cross-entropy plus a dependence regulariser (``hsic``, ``nhsic``
or any registered one) under identical settings, and compare accuracy, epochs to a
target accuracy, generalisation gap and time per epoch.
"""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mi_probe.plugin import (
    aggregate_seeds, hookimpl, Plan, RunContext, seed_units, SpecError, TableSchema,
    TrainingRequest, unit_seed)
from mi_probe.builtin.regularizers.hsic import HSICParams
from mi_probe.builtin.regularizers.nhsic import NHSICParams

_OWN_PARAMS = {"hsic": HSICParams, "nhsic": NHSICParams}


class HSICCompareParams(BaseModel):
    """CE vs CE + a dependence regulariser with identical settings and seeds (Fig. 9)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["hsic_compare"] = "hsic_compare"
    regularizer: dict[str, Any] = Field(
        default_factory=lambda: {"kind": "hsic"},
        description="the regulariser compared with plain cross-entropy: parameters of any "
        "registered regulariser, with its kind (hsic and nhsic are validated with the spec, "
        "others when the run starts)")
    target_acc: float | None = Field(
        None, gt=0, le=1, description="validation accuracy whose first epoch is reported "
        "(epochs_to_target); None: target_fraction × the CE run's best accuracy, per seed")
    target_fraction: float = Field(0.95, gt=0, le=1,
                                   description="used when target_acc is None")

    @field_validator("regularizer")
    @classmethod
    def _known_params(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "kind" not in value:
            raise ValueError("regularizer needs a 'kind' (e.g. {kind: hsic, lam: 0.1})")
        model = _OWN_PARAMS.get(value["kind"])
        if model is None:  # a third-party regulariser: validated when the run starts
            return value
        try:  # validate (and fill defaults) with the spec
            return model(**value).model_dump(mode="json")
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} "
                                 f"(got {e.get('input')!r})" for e in exc.errors())
            raise ValueError(f"invalid {value['kind']} parameters: {problems}") from None


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The best-accuracy row (earliest on ties, as the training loop keeps it)."""
    return max(history, key=lambda r: (r["val_acc"], -r["epoch"]))


def _epochs_to(history: list[dict[str, Any]], target: float) -> int | None:
    for row in history:
        if row["val_acc"] >= target - 1e-12:
            return int(row["epoch"])
    return None


#: The tables a run writes (``interfaces.DeclaresTables``): required columns, then
#: those that appear with some settings.
TABLE_SCHEMAS = {
    "hsic_compare": TableSchema(
        ("seed", "regularizer", "best_val_acc", "best_epoch"),
        ("final_val_acc", "final_epoch", "target", "epochs_to_target", "train_loss_best",
         "val_loss_best", "generalisation_gap", "seconds_per_epoch", "time_ratio_vs_ce",
         "lam")),
}


class HSICCompare:
    name = "hsic_compare"
    table_schemas = TABLE_SCHEMAS

    def __init__(self, params: HSICCompareParams):
        self.params = params

    def plan(self, ctx: RunContext) -> Plan:
        # fail before any training on an unknown or invalid regulariser
        params = dict(self.params.regularizer)
        ctx.plugin("regularizers", params.pop("kind"), **params)
        if not hasattr(ctx, "train"):
            raise SpecError("hsic_compare needs a run context that can train models "
                            "(ctx.train); this one cannot")
        return seed_units(ctx)

    def trainings(self, ctx: RunContext) -> list[TrainingRequest]:
        """Per seed: plain cross-entropy, and cross-entropy plus the regulariser."""
        return [request for seed in ctx.spec.seeds for request in (
            TrainingRequest(seed, regularizers=[]),
            TrainingRequest(seed, regularizers=[dict(self.params.regularizer)]))]

    def run_unit(self, ctx: RunContext, unit: str, plan: Plan) -> dict[str, pl.DataFrame]:
        seed = unit_seed(unit)
        ctx.progress(f"seed {seed}: training with plain cross-entropy")
        _, ce_hist = ctx.train(seed, regularizers=[])
        kind = self.params.regularizer["kind"]
        ctx.progress(f"seed {seed}: training with cross-entropy + {kind}")
        _, reg_hist = ctx.train(seed, regularizers=[dict(self.params.regularizer)])
        target = (self.params.target_acc if self.params.target_acc is not None
                  else self.params.target_fraction * _best(ce_hist)["val_acc"])
        rows = []
        ce_seconds = None
        for history in (ce_hist, reg_hist):
            best, final = _best(history), history[-1]
            trained = [r for r in history if r["epoch"] > 0]
            seconds = (sum(r["seconds"] for r in trained) / len(trained)) if trained else None
            if ce_seconds is None:
                ce_seconds = seconds
            rows.append({
                "seed": seed, "regularizer": history[0]["regularizer"],
                "best_val_acc": best["val_acc"], "best_epoch": int(best["epoch"]),
                "final_val_acc": final["val_acc"], "final_epoch": int(final["epoch"]),
                "target": target, "epochs_to_target": _epochs_to(history, target),
                "train_loss_best": best["train_loss"], "val_loss_best": best["val_loss"],
                "generalisation_gap": (best["val_loss"] - best["train_loss"]
                                       if best["train_loss"] is not None else None),
                "seconds_per_epoch": seconds,
                "time_ratio_vs_ce": (seconds / ce_seconds if seconds and ce_seconds else None),
                "lam": self.params.regularizer.get("lam") if history is reg_hist else 0.0,
            })
        floats = {c: pl.Float64 for c in ("train_loss_best", "generalisation_gap",
                                          "seconds_per_epoch", "time_ratio_vs_ce", "lam")}
        return {"hsic_compare": pl.DataFrame(rows, schema_overrides=floats | {
            "epochs_to_target": pl.Int64})}

    def finalize(self, ctx: RunContext | None, tables: dict[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
        frame = tables.get("hsic_compare")
        if frame is None or frame.height == 0:
            return {}
        values = ["best_val_acc", "final_val_acc", "epochs_to_target", "generalisation_gap",
                  "seconds_per_epoch", "time_ratio_vs_ce"]
        summary = aggregate_seeds(frame, ["regularizer"], values)
        reached = frame.group_by("regularizer").agg(
            pl.col("epochs_to_target").is_not_null().sum().alias("n_reached_target"))
        return {"summary_hsic_compare": summary.join(reached, on="regularizer", how="left")}

    def figures(self, tables: dict[str, pl.DataFrame]) -> dict[str, Any]:
        from mi_probe.plugin import charts

        figs: dict[str, Any] = {}
        train = tables.get("training")
        if train is not None and train.height:
            acc = train.drop_nulls("val_acc")
            figs["hsic_val_acc"] = charts.line(
                acc, x="epoch", y="val_acc", color="regularizer",
                title="Validation accuracy: CE vs CE + HSIC (mean, 95% CI over seeds)",
                y_title="validation accuracy")
            figs["hsic_val_loss"] = charts.line(
                train.drop_nulls("val_loss"), x="epoch", y="val_loss", color="regularizer",
                title="Validation loss (cross-entropy) per epoch", y_title="validation CE")
            trained = train.drop_nulls("train_loss")
            if trained.height:
                figs["hsic_train_loss"] = charts.line(
                    trained, x="epoch", y="train_loss", color="regularizer",
                    title="Training cross-entropy per epoch (regulariser term excluded)",
                    y_title="training CE")
        per_seed = tables.get("hsic_compare")
        if (per_seed is not None and "seconds_per_epoch" in per_seed.columns
                and per_seed["seconds_per_epoch"].drop_nulls().len()):
            # the same colours and order as the training curves; error bars over seeds
            figs["hsic_seconds_per_epoch"] = charts.bars(
                per_seed, x="regularizer", y="seconds_per_epoch", color="regularizer",
                title="Training time per epoch", x_title="regulariser",
                y_title="seconds per epoch", width=300)
        return figs


@hookimpl
def mi_probe_register_experiments(register):
    register("hsic_compare", HSICCompare, HSICCompareParams)
