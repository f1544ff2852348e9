"""``mi-probe bench-estimators``: bmi's tasks rebuilt in numpy (checked against a fixture
drawn from bmi itself), the runner, its resumability, its errors, and, when bmi's Python
is there, the live bridge.

``tests/fixtures/bmi_tasks.json`` was written once by bmi 0.1.3's Python with
``python mi_probe/_core/bench/bmi_worker.py fixture tests/fixtures/bmi_tasks.json``
(2,000 bmi samples per task at seed 0). ``make test`` does not need bmi: the live tests
skip, saying why, unless ``$MI_PROBE_BMI_PYTHON`` or ``.venv-bmi`` gives bmi's Python.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pytest
from pydantic import BaseModel, ConfigDict

from mi_probe import cli
from mi_probe.errors import EstimatorError, RunError, SpecError, UnknownPluginError
from mi_probe.interfaces import Interval
from mi_probe.plugin import hookimpl
from mi_probe._core.bench import tasks as T
from mi_probe._core.bench.bridge import BmiError, find_bmi_python, parse_bmi_estimator
from mi_probe._core.bench.rows import COLUMNS, ROWS
from mi_probe._core.bench.runner import parse_seeds
from mi_probe._core.plugins import get_plugin_manager

import mi_probe

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "bmi_tasks.json").read_text())


# ------------------------------------------------------------- a real test estimator


class GaussParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["gauss"] = "gauss"
    max_joint_dims: int | None = None
    resamples: int = 20


#: tests set this to make the next joint_mi calls raise KeyboardInterrupt after so
#: many successful ones (an interrupted bench)
INTERRUPT: dict[str, int | None] = {"after": None}


def gaussian_mi(x: np.ndarray, y: np.ndarray) -> float:
    """I(X;Y) of a Gaussian with the samples' correlation matrix:
    ½ (ln det R_xx + ln det R_yy − ln det R), exact in the limit on Gaussian tasks."""
    r = np.corrcoef(np.concatenate([x, y], axis=1), rowvar=False)
    dx = x.shape[1]
    logdet = lambda m: np.linalg.slogdet(m)[1]  # noqa: E731
    return 0.5 * (logdet(r[:dx, :dx]) + logdet(r[dx:, dx:]) - logdet(r))


class GaussEstimator:
    """The Gaussian (correlation) MI estimator, with the JointMI and JointMIIntervals
    abilities; a percentile bootstrap over rows gives its intervals."""

    name = "gauss"
    reductions: frozenset[str] = frozenset()
    interval_method = "bootstrap"

    def __init__(self, params: GaussParams):
        self.params = params
        self.max_joint_dims = params.max_joint_dims
        self.calls = 0

    def joint_mi(self, x, y) -> float:
        if INTERRUPT["after"] is not None:
            if INTERRUPT["after"] <= 0:
                raise KeyboardInterrupt
            INTERRUPT["after"] -= 1
        if x.shape[1] + y.shape[1] > 40:
            raise EstimatorError("gauss test estimator: too many dimensions for this test")
        return gaussian_mi(x.cpu().numpy(), y.cpu().numpy())

    def joint_mi_interval(self, x, y, level: float, seed: int) -> Interval:
        import torch

        xs, ys = x.cpu().numpy(), y.cpu().numpy()
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(self.params.resamples):
            rows = rng.integers(0, len(xs), len(xs))
            draws.append(gaussian_mi(xs[rows], ys[rows]))
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
        as_t = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        return Interval(as_t(self.joint_mi(x, y)), as_t(lo), as_t(hi), level, "bootstrap")

    def label_mi(self, acts, labels, num_classes):
        raise EstimatorError("gauss test estimator: joint MI only")

    def input_mi(self, acts):
        return None

    def layer_mi(self, acts, labels, num_classes, reduce):
        raise EstimatorError("gauss test estimator: joint MI only")

    def bias(self, n_samples, num_classes):
        return 0.0

    def describe(self):
        return {"estimator": "gauss"}


class NoJointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["nojoint"] = "nojoint"


class NoJoint:
    """An estimator of label MI only (no joint_mi)."""

    name = "nojoint"
    reductions: frozenset[str] = frozenset()

    def __init__(self, params: NoJointParams):
        self.params = params

    label_mi = GaussEstimator.label_mi
    input_mi = GaussEstimator.input_mi
    layer_mi = GaussEstimator.layer_mi
    bias = GaussEstimator.bias
    describe = GaussEstimator.describe


class _TestPlugin:
    @hookimpl
    def mi_probe_register_estimators(self, register):
        register("gauss", GaussEstimator, GaussParams)
        register("nojoint", NoJoint, NoJointParams)


PLUGIN = _TestPlugin()


@pytest.fixture(scope="module")
def bench_pm():
    return get_plugin_manager([PLUGIN], autoload=False)


def bench(out: Path, estimators=("gauss",), **kwargs: Any) -> pl.DataFrame:
    kwargs.setdefault("tasks", ["1v1-normal-0.75", "multinormal-sparse-3-3-2-2.0"])
    kwargs.setdefault("n", 1000)
    kwargs.setdefault("seeds", "0-1")
    kwargs.setdefault("bmi_python", False)
    kwargs.setdefault("figures", False)
    kwargs.setdefault("log", lambda message: None)
    kwargs.setdefault("plugins", [PLUGIN])
    return mi_probe.bench_estimators(list(estimators), out=out, **kwargs)


# ------------------------------------------------------------- tasks against bmi


def test_the_forty_tasks_have_bmis_names_titles_and_dims():
    assert list(T.TASKS) == list(FIXTURE["tasks"])
    assert len(T.TASKS) == 40
    for name, entry in FIXTURE["tasks"].items():
        task = T.TASKS[name]
        assert (task.title, task.dim_x, task.dim_y) == (
            entry["title"], entry["dim_x"], entry["dim_y"]), name


def test_true_mi_equals_bmis():
    for name, entry in FIXTURE["tasks"].items():
        ours = T.TASKS[name].truth
        if name == "1v1-additive-0.1":
            # bmi computes ε − ln(2ε) in jax's float32: its value is ours rounded
            assert float(np.float32(ours)) == entry["truth"]
            assert abs(ours - entry["truth"]) < 1e-7
            assert ours == pytest.approx(0.1 - math.log(0.2), abs=1e-15)
        else:
            assert abs(ours - entry["truth"]) <= 1e-9, (name, ours, entry["truth"])


def test_true_mi_closed_forms():
    """Truths from the textbook formulas, not bmi's code path."""
    assert T.TASKS["1v1-normal-0.75"].truth == pytest.approx(-0.5 * math.log(1 - 0.75 ** 2))
    # 2-pair: two independent pairs with correlation 4/5 each
    assert T.TASKS["multinormal-sparse-25-25-2-2.0"].truth == pytest.approx(
        -math.log(1 - 0.8 ** 2), abs=1e-12)
    assert T.TASKS["1v1-additive-0.75"].truth == pytest.approx(1 / 3)
    # Student-t, identity dispersion, ν = 2, 1 × 1: ln 2 − 1/2... via the entropies
    from scipy.special import digamma, gammaln

    def h(k, nu):
        return (gammaln(nu / 2) - gammaln((nu + k) / 2) + k / 2 * math.log(nu * math.pi)
                + (nu + k) / 2 * (digamma((nu + k) / 2) - digamma(nu / 2)))

    for name in ("student-identity-2-2-2", "student-identity-5-5-3"):
        task = T.TASKS[name]
        nu, k = task.root.df, task.dim_x
        assert task.truth == pytest.approx(2 * h(k, nu) - h(2 * k, nu), abs=1e-12)


def test_transforms_map_bmis_root_samples_onto_bmis_task_samples():
    """For every transformed task, mi-probe's chain of maps applied to bmi's root rows
    gives bmi's transformed rows (bmi computes in float32: 1e-5 allowed)."""
    checked = 0
    for name, entry in FIXTURE["tasks"].items():
        if "transform" not in entry:
            continue
        tr = entry["transform"]
        x, y = T.TASKS[name].transform(np.array(tr["root_x"]), np.array(tr["root_y"]))
        np.testing.assert_allclose(x, tr["x"], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(y, tr["y"], rtol=1e-5, atol=1e-5, err_msg=name)
        checked += 1
    assert checked == sum(1 for t in T.TASKS.values() if t.chain) == 21


#: samples of mi-probe's sampler compared with the fixture's 2,000 bmi samples
N_OURS = 20_000
#: the largest allowed |z|: at ~11,000 (dimension, level) comparisons a correct sampler
#: reaches about 4 (3.7 measured); 5 leaves a margin, and wrong ones exceed it by far
Z_MAX = 5.0


def _draw(task: T.Task) -> np.ndarray:
    return np.concatenate(task.sample(N_OURS, 1), axis=1)


def quantile_z(xy: np.ndarray, entry: dict) -> float:
    """Largest |z| over dimensions and levels p of F̂(q_bmi(p)) − p, where q_bmi(p) is
    bmi's sample quantile and F̂ the empirical CDF of mi-probe's samples ``xy``
    (N_OURS rows); its sampling sd is sqrt(p(1−p)(1/n_bmi + 1/N_OURS)), whatever the
    density."""
    levels = np.array(FIXTURE["levels"])
    quantiles = np.array(entry["quantiles"])  # (dims, levels)
    ordered = np.sort(xy, axis=0)
    cdf = np.stack([np.searchsorted(ordered[:, d], quantiles[d], side="right")
                    for d in range(xy.shape[1])]) / len(xy)
    sd = np.sqrt(levels * (1 - levels) * (1 / FIXTURE["n"] + 1 / len(xy)))
    return float(np.max(np.abs(cdf - levels) / sd))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))  # no ties: continuous
    return float(np.corrcoef(ra, rb)[0, 1])


def spearman_z(xy: np.ndarray, dx: int, entry: dict) -> float:
    """Largest |z| of the difference between mi-probe's and bmi's Spearman correlations
    of a few coordinate pairs; sd from Fieller et al. (1957): the Fisher z of a Spearman
    correlation r has variance 1.06 / (n − 3), so r has sd (1 − r²)·sqrt(1.06 / (n − 3))."""
    dy = xy.shape[1] - dx
    index = {"x0,y0": (0, dx), "x0,x1": (0, 1), "x1,y1": (1, dx + 1 if dy > 1 else dx),
             "xlast,ylast": (dx - 1, xy.shape[1] - 1)}
    worst = 0.0
    for key, theirs in entry["spearman"].items():
        ours = _spearman(xy[:, index[key][0]], xy[:, index[key][1]])
        sd = (1 - theirs ** 2) * math.sqrt(1.06 / (FIXTURE["n"] - 3) + 1.06 / (len(xy) - 3))
        worst = max(worst, abs(ours - theirs) / sd)
    return worst


def test_samplers_match_bmis_distributions():
    worst = {}
    for name, entry in FIXTURE["tasks"].items():
        task = T.TASKS[name]
        xy = _draw(task)
        worst[name] = (quantile_z(xy, entry), spearman_z(xy, task.dim_x, entry))
    bad = {k: v for k, v in worst.items() if max(v) > Z_MAX}
    assert not bad, f"samplers differ from bmi's (|z| > {Z_MAX}): {bad}"
    # what a correct sampler reaches here (measured: 3.7 and 2.7): the margin is clear
    assert max(q for q, _ in worst.values()) < 4.5 and max(r for _, r in worst.values()) < 4


def test_the_checks_catch_a_wrong_sampler():
    """Plausible mistakes fail the checks above: a correlation of 0.70 for 0.75 (Spearman
    z ≈ 7), Student-t with ν = 2 for ν = 1 (quantile z ≈ 9), the spiral's speed not
    divided by the dimension (Spearman z ≈ 11); x·|x| for the half-cube's x·sqrt|x|
    moves the CDF by 2.4% at most, which quantiles of 2,000 samples see only at z ≈ 4.9,
    but the transform check sees at once."""
    entries = FIXTURE["tasks"]
    normal = T.TASKS["1v1-normal-0.75"]
    wrong_rho = T.Task(normal.name, normal.title, T.bivariate_normal(0.70))
    assert spearman_z(_draw(wrong_rho), 1, entries[normal.name]) > Z_MAX
    student = T.TASKS["student-identity-2-2-1"]
    wrong_df = T.Task(student.name, student.title,
                      T.Root("student", 2, 2, matrix=np.eye(4), df=2))
    assert quantile_z(_draw(wrong_df), entries[student.name]) > Z_MAX
    spiral = T.TASKS["spiral-multinormal-sparse-3-3-2-2.0"]
    fast = T.Task(spiral.name, spiral.title, spiral.root,
                  (T.Step("spiral", T.spiral(3, 0, 1, 1.0), T.spiral(3, 1, 2, 1.0)),))
    assert spearman_z(_draw(fast), 3, entries[spiral.name]) > 2 * Z_MAX
    tr = entries["half_cube-1v1-normal-0.75"]["transform"]
    root = np.array(tr["root_x"])
    assert np.abs(root * np.abs(root) - np.array(tr["x"])).max() > 0.05


def test_sampling_is_deterministic_and_shares_roots_like_bmi():
    a = T.TASKS["half_cube-1v1-normal-0.75"].sample(50, 3)
    b = T.TASKS["half_cube-1v1-normal-0.75"].sample(50, 3)
    np.testing.assert_array_equal(a[0], b[0])
    base = T.TASKS["1v1-normal-0.75"].sample(50, 3)
    np.testing.assert_allclose(a[0], T.half_cube(base[0]))
    assert T.TASKS["swissroll_x-normal_cdf-1v1-normal-0.75"].sample(10, 0)[0].shape == (10, 2)


def test_subsets():
    assert len(T.SUBSETS["all"]) == 40 and len(T.SUBSETS["v1"]) == 39
    assert "1v1-additive-0.1" not in T.SUBSETS["v1"]
    assert sum(len(T.SUBSETS[g]) for g in ("1v1", "embeddings", "multinormal", "student",
                                           "transformed")) == 40
    assert all(name in T.TASKS for names in T.SUBSETS.values() for name in names)
    # the CLI lists the subsets without importing the tasks module
    sub = next(a for a in cli._parser()._subparsers._group_actions[0]
               .choices["bench-estimators"]._actions if a.dest == "subset")
    assert list(sub.choices) == list(T.SUBSETS)


def test_the_tasks_module_imports_no_torch():
    code = ("import json, sys; import mi_probe._core.bench.tasks, mi_probe._core.bench.bridge; "
            "import mi_probe; mi_probe.bench_estimators; "
            "print(json.dumps('torch' in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) is False


# ------------------------------------------------------------- the runner


def test_runner_writes_the_tidy_table(tmp_path):
    table = bench(tmp_path / "b", tasks=["1v1-normal-0.75", "multinormal-sparse-3-3-2-2.0",
                                        "multinormal-sparse-5-5-2-2.0"],
                  estimators=["gauss:{max_joint_dims: 6}"], n=2000, seeds="0-2")
    assert table.columns == list(COLUMNS)
    assert table.height == 9  # 3 tasks x 3 seeds x 1 estimator
    ok = table.filter(pl.col("status") == "ok")
    assert ok.height == 6
    # a real estimate of the sample the bench drew (standardised: the same correlations)
    row = ok.filter((pl.col("task") == "1v1-normal-0.75") & (pl.col("seed") == 1)).row(0, named=True)
    x, y = T.TASKS["1v1-normal-0.75"].sample(2000, 1)
    assert row["estimate"] == pytest.approx(gaussian_mi(x, y), abs=1e-12)
    assert row["truth"] == T.TASKS["1v1-normal-0.75"].truth
    assert row["error"] == pytest.approx(row["estimate"] - row["truth"])
    assert row["abs_error"] == pytest.approx(abs(row["error"]))
    assert row["estimator"] == 'gauss(max_joint_dims=6)' and row["source"] == "mi-probe"
    assert (row["dx"], row["dy"], row["n"]) == (1, 1, 2000) and row["time_s"] >= 0
    # exact on Gaussians up to sampling error (sd ≈ 0.02 nats at N = 2000)
    assert ok["abs_error"].max() < 0.1
    skipped = table.filter(pl.col("status") == "skipped")
    assert skipped["task"].unique().to_list() == ["multinormal-sparse-5-5-2-2.0"]
    assert skipped["reason"].to_list() == ["dx + dy = 10 > max_joint_dims 6 of "
                                           "gauss(max_joint_dims=6)"] * 3
    assert skipped["estimate"].is_null().all()
    # the files: tables as parquet and csv, the same rows
    out = tmp_path / "b"
    assert pl.read_parquet(out / "results.parquet").equals(table)
    assert pl.read_csv(out / "results.csv").height == 9
    summary = pl.read_parquet(out / "summary.parquet")
    first = summary.filter(pl.col("task") == "1v1-normal-0.75").row(0, named=True)
    seeds = ok.filter(pl.col("task") == "1v1-normal-0.75")["estimate"]
    assert first["estimate_mean"] == pytest.approx(seeds.mean())
    assert first["estimate_sd"] == pytest.approx(seeds.std())
    assert (first["n_seeds"], first["status"], first["coverage"]) == (3, "ok", None)
    last = summary.filter(pl.col("task") == "multinormal-sparse-5-5-2-2.0").row(0, named=True)
    assert (last["status"], last["n_skipped"], last["estimate_mean"]) == ("skipped", 3, None)
    assert pl.read_parquet(out / "tasks.parquet")["task"].to_list() == [
        "1v1-normal-0.75", "multinormal-sparse-3-3-2-2.0", "multinormal-sparse-5-5-2-2.0"]


def test_failed_estimates_are_rows_with_the_reason(tmp_path):
    table = bench(tmp_path / "b", tasks=["multinormal-dense-25-25-0.5"], seeds="0")
    row = table.row(0, named=True)
    assert row["status"] == "failed" and "too many dimensions" in row["reason"]


def test_intervals_give_coverage_and_figures(tmp_path):
    out = tmp_path / "b"
    table = bench(out, estimators=["gauss:{resamples: 30}"], interval=0.9, seeds="0-3",
                  figures=True)
    assert table["ci_low"].is_not_null().all() and (table["ci_level"] == 0.9).all()
    assert (table["ci_low"] <= table["ci_high"]).all()
    assert (table["interval_method"] == "bootstrap").all()
    summary = pl.read_parquet(out / "summary.parquet")
    for task in ("1v1-normal-0.75", "multinormal-sparse-3-3-2-2.0"):
        rows = table.filter(pl.col("task") == task)
        expected = ((rows["ci_low"] <= rows["truth"]) & (rows["truth"] <= rows["ci_high"])).mean()
        assert summary.filter(pl.col("task") == task)["coverage"].item() == pytest.approx(expected)
    for name in ("estimate_vs_truth", "error"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
        assert "vega" in (out / "figures" / f"{name}.html").read_text()


def test_an_interrupted_bench_keeps_its_rows_and_resumes_to_the_same_table(tmp_path):
    fresh = bench(tmp_path / "fresh", seeds="0-2")
    out = tmp_path / "resumed"
    INTERRUPT["after"] = 4
    try:
        with pytest.raises(KeyboardInterrupt):
            bench(out, seeds="0-2")
    finally:
        INTERRUPT["after"] = None
    assert len((out / ROWS).read_text().splitlines()) == 4
    assert json.loads((out / "bench.json").read_text())["status"] == "interrupted"
    with open(out / ROWS, "a") as fh:  # a crash in the middle of writing a row
        fh.write('{"task": "1v1-norm')
    calls = []
    resumed = bench(out, seeds="0-2", log=calls.append)
    assert "2 row(s) to do, 4 already" in calls[0]
    assert len([c for c in calls if c.startswith("[")]) == 2
    drop = ["time_s"]
    assert resumed.drop(drop).equals(fresh.drop(drop))
    # nothing left: a third call measures nothing and gives the same table
    calls.clear()
    again = bench(out, seeds="0-2", log=calls.append)
    assert "0 row(s) to do, 6 already" in calls[0] and len(calls) == 1
    assert again.equals(resumed)


def test_a_folder_accumulates_rows_but_refuses_other_settings(tmp_path):
    out = tmp_path / "b"
    bench(out, seeds="0")
    table = bench(out, seeds="0-1")
    assert table.height == 4
    with pytest.raises(RunError, match="standardize=True.*standardize=False.*another --out"):
        bench(out, seeds="0", standardize=False)


def test_raw_samples_without_standardisation(tmp_path):
    table = bench(tmp_path / "b", standardize=False, tasks=["1v1-normal-0.75"], seeds="0")
    x, y = T.TASKS["1v1-normal-0.75"].sample(1000, 0)
    assert table["estimate"].item() == pytest.approx(gaussian_mi(x, y), abs=1e-12)


def test_shipped_estimators_on_a_small_subset(tmp_path):
    """The built-in histogram and the ksg plugin, where they have joint_mi: real
    estimates near the truth, and the histogram's cap on dx + dy recorded as a skip."""
    from mi_probe.interfaces import JointMI

    plugins: list[Any] = [PLUGIN]
    try:
        import mi_probe_ksg.plugin  # noqa: F401

        plugins.append("mi_probe_ksg.plugin")
    except ImportError:
        pass
    pm = get_plugin_manager(plugins, autoload=False)
    kinds = [k for k in ("histogram", "ksg") if k in pm.registry.entries("estimators")
             and isinstance(pm.registry.build("estimators", pm.registry.validate_params(
                 "estimators", {"kind": k})), JointMI)]
    if not kinds:
        pytest.skip("neither histogram nor ksg has joint_mi yet")
    table = bench(tmp_path / "b", estimators=kinds, plugins=plugins, n=2000)
    ok = table.filter(pl.col("status") == "ok")
    assert ok["estimate"].is_finite().all()
    if "ksg" in kinds:
        assert ok.filter(pl.col("estimator") == "ksg")["abs_error"].max() < 0.15
    if "histogram" in kinds:
        hist = table.filter(pl.col("estimator") == "histogram")
        cap = pm.registry.build("estimators", pm.registry.validate_params(
            "estimators", {"kind": "histogram"})).max_joint_dims
        big = hist.filter(pl.col("dx") + pl.col("dy") > (cap or 10 ** 9))
        assert (big["status"] == "skipped").all()
        assert big["reason"].str.contains("max_joint_dims").all()


def test_all_estimators_means_those_with_joint_mi(bench_pm):
    from mi_probe._core.bench.runner import build_contenders, joint_mi_kinds

    able, not_able = joint_mi_kinds(bench_pm)
    assert "gauss" in able and not_able["nojoint"] == "has no joint_mi"
    # a kind given explicitly is not added again with its defaults
    labels = [c.label for c in build_contenders(["gauss:{resamples: 3}"], bench_pm, True)]
    assert labels == ["gauss(resamples=3)"] + [k for k in able if k != "gauss"]
    assert [c.label for c in build_contenders([], bench_pm, True)] == able


# ------------------------------------------------------------- errors


def test_unknown_task_has_a_did_you_mean(tmp_path):
    with pytest.raises(SpecError, match=r"unknown bmi task '1v1-normal-0.7'.*did you mean "
                       r"'1v1-normal-0.75'"):
        bench(tmp_path / "b", tasks=["1v1-normal-0.7"])
    with pytest.raises(SpecError, match="unknown task subset 'cii'.*did you mean 'ci'"):
        bench(tmp_path / "b", tasks=None, subset="cii")


def test_unknown_or_unable_estimators(tmp_path):
    with pytest.raises(UnknownPluginError, match="unknown estimator 'gaus'.*did you mean "
                       "'gauss'"):
        bench(tmp_path / "b", estimators=["gaus"])
    with pytest.raises(SpecError, match="estimator 'nojoint' cannot take bmi's tasks: it has "
                       "no joint_mi.*that have it: .*gauss"):
        bench(tmp_path / "b", estimators=["nojoint"])
    with pytest.raises(SpecError, match="invalid parameters for estimator 'gauss'"):
        bench(tmp_path / "b", estimators=["gauss:{resample: 3}"])
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        bench(tmp_path / "b", estimators=["gauss:[1, 2]"])
    with pytest.raises(SpecError, match="no estimators"):
        bench(tmp_path / "b", estimators=[])
    assert not (tmp_path / "b").exists()  # refused before any work


@pytest.mark.parametrize("n", [3, 0, -5, 2.5, "many", True])
def test_bad_n(tmp_path, n):
    with pytest.raises(SpecError, match="--n must be an integer of at least 10"):
        bench(tmp_path / "b", n=n)


def test_bad_seeds_and_interval(tmp_path):
    with pytest.raises(SpecError, match="expected seeds like 0-9"):
        bench(tmp_path / "b", seeds="3-1")
    with pytest.raises(SpecError, match="expected seeds like 0-9"):
        bench(tmp_path / "b", seeds="a")
    assert parse_seeds("0-2,7, 5") == [0, 1, 2, 5, 7]
    with pytest.raises(SpecError, match=r"--interval must be a coverage level in \(0, 1\)"):
        bench(tmp_path / "b", interval=95)


def test_bmi_arguments_without_bmi(tmp_path, monkeypatch):
    monkeypatch.delenv("MI_PROBE_BMI_PYTHON", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError, match="--bmi-estimator needs bmi's Python"):
        bench(tmp_path / "b", bmi_python=None, bmi_estimators=["KSG"])
    with pytest.raises(BmiError, match="--bmi-python .*nowhere.*no such Python"):
        bench(tmp_path / "b", bmi_python=tmp_path / "nowhere")
    monkeypatch.setenv("MI_PROBE_BMI_PYTHON", str(tmp_path / "missing"))
    with pytest.raises(BmiError, match=r"\$MI_PROBE_BMI_PYTHON .*no such Python"):
        find_bmi_python()
    with pytest.raises(SpecError, match="unknown bmi estimator 'KGS'.*did you mean 'KSG'"):
        parse_bmi_estimator("KGS")
    assert parse_bmi_estimator("mine:{max_n_steps: 10}") == ("MINE", {"max_n_steps": 10})
    assert parse_bmi_estimator("Donsker-Varadhan") == ("DV", {})


def test_cli(tmp_path, bench_pm, capsys):
    out = tmp_path / "b"
    code = cli.main(["bench-estimators", "--estimator", "gauss", "--tasks",
                     "1v1-normal-0.75", "--n", "500", "--seeds", "0-1", "--out", str(out),
                     "--no-bmi", "--no-figures"], pm=bench_pm)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"results: {out / 'results.parquet'}" in captured.out
    assert "gauss: 1/1 tasks, mean |error|" in captured.err
    assert pl.read_parquet(out / "results.parquet").height == 2
    code = cli.main(["bench-estimators", "--estimator", "gauss", "--tasks", "nope",
                     "--out", str(out), "--no-bmi"], pm=bench_pm)
    assert code == 2 and "error: unknown bmi task 'nope'" in capsys.readouterr().err
    code = cli.main(["bench-estimators", "--estimator", "gauss", "--n", "5",
                     "--out", str(out), "--no-bmi"], pm=bench_pm)
    assert code == 2 and "--n must be an integer" in capsys.readouterr().err


# ------------------------------------------------------------- live bmi (optional)


def _bmi_python() -> Path:
    try:
        python = find_bmi_python(root=ROOT)
    except BmiError as exc:
        pytest.skip(f"bmi's Python is misconfigured: {exc}")
    if python is None:
        pytest.skip("bmi is not installed here: set MI_PROBE_BMI_PYTHON to a Python with "
                    "benchmark-mi (or make .venv-bmi) to compare with bmi live")
    return python


@pytest.fixture(scope="module")
def bmi_bridge(tmp_path_factory):
    from mi_probe._core.bench.bridge import BmiBridge

    python = _bmi_python()
    with BmiBridge(python, tmp_path_factory.mktemp("bmi")) as bridge:
        yield bridge


def test_live_bmi_truths_and_samplers(bmi_bridge):
    from scipy.stats import ks_2samp

    meta = bmi_bridge.tasks(list(T.TASKS))
    assert list(meta) == list(T.TASKS)
    for name, task in T.TASKS.items():
        assert (meta[name]["dim_x"], meta[name]["dim_y"]) == (task.dim_x, task.dim_y)
        tol = 1e-7 if name == "1v1-additive-0.1" else 1e-9  # bmi's float32 truth
        assert abs(meta[name]["truth"] - task.truth) <= tol, name
    for name in ("half_cube-1v1-normal-0.75", "1v1-bimodal-0.75", "student-identity-3-3-2",
                 "spiral-normal_cdf-multinormal-sparse-5-5-2-2.0",
                 "swissroll_x-normal_cdf-1v1-normal-0.75"):
        theirs = np.concatenate(bmi_bridge.sample(name, 3000, 7), axis=1)
        ours = np.concatenate(T.TASKS[name].sample(3000, 7), axis=1)
        p = min(ks_2samp(ours[:, d], theirs[:, d]).pvalue for d in range(ours.shape[1]))
        assert p * ours.shape[1] > 1e-4, (name, p)


def test_live_bmi_estimators_see_the_same_samples(tmp_path):
    """bmi's CCA and the Gaussian estimator are the same formula: on the same samples
    they agree to rounding."""
    python = _bmi_python()
    table = bench(tmp_path / "b", bmi_python=python, bmi_estimators=["CCA"], seeds="0-1",
                  tasks=["1v1-normal-0.75", "multinormal-dense-2-2-0.5"])
    wide = table.pivot(on="estimator", index=["task", "seed"], values="estimate")
    np.testing.assert_allclose(wide["bmi:CCA"], wide["gauss"], rtol=1e-6)
    tasks = pl.read_parquet(tmp_path / "b" / "tasks.parquet")
    assert tasks["sampler_ok"].all() and (tasks["truth_diff"].abs() < 1e-9).all()
