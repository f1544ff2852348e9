"""Declarative claims, the tiny profile, `mi-probe check`, and the pytest spec collector."""

from __future__ import annotations

import textwrap

import polars as pl
import pytest

from mi_probe import cli
from mi_probe._core.checks import BoundCheck, CompareCheck, TrendCheck
from mi_probe._core.claims import evaluate_checks
from mi_probe.errors import SpecError
from mi_probe._core.profiles import apply_profile, tiny_arch
from mi_probe._core.spec import load_spec_text

# pytester's in-process runs drop modules first imported inside them; torch cannot be
# imported twice in one process, so everything heavy is imported here first.
import timm  # noqa: E402,F401
import torch  # noqa: E402,F401

import altair  # noqa: E402,F401
import scipy.stats  # noqa: E402,F401
import sklearn.model_selection  # noqa: E402,F401
import vl_convert  # noqa: E402,F401

import mi_probe._core.runner.driver  # noqa: E402,F401
import mi_probe._core.report  # noqa: E402,F401
import mi_probe.testing.stages  # noqa: E402,F401
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402

get_plugin_manager(autoload=False)  # imports every built-in plugin module

pytest_plugins = ["pytester"]

LAYERS = pl.DataFrame({
    "seed": [0] * 4 + [1] * 4, "state": ["trained"] * 8, "depth": [0, 1, 2, 3] * 2,
    "site": ["a", "b", "c", "d"] * 2, "i_ty": [0.1, 0.2, 0.4, 0.8, 0.1, 0.25, 0.35, 0.9]})
KNOCK = pl.DataFrame({
    "seed": [0, 0, 1, 1, 2, 2], "selection": ["top", "random"] * 3,
    "drop": [0.5, 0.01, 0.6, 0.02, 0.55, 0.0]})


KNOCK3 = pl.DataFrame({
    "seed": [0, 0, 1, 1, 2, 2], "selection": ["top", "random"] * 3,
    "drop": [0.5, 0.01, 0.6, 0.02, 0.55, 0.0]})


def test_trend_claim_one_seed_is_inconclusive_three_seeds_decide():
    ok = TrendCheck(name="rises", table="layer_mi", value="i_ty")
    down = TrendCheck(name="falls", table="layer_mi", value="i_ty", direction="decreasing")
    # two seeds that both rise perfectly: Fisher z of the clipped correlations
    res = evaluate_checks([ok, down], {"layer_mi": LAYERS})
    assert [r["verdict"] for r in res] == ["holds", "does not hold"]
    assert res[0]["observed"] == pytest.approx(0.9999) and res[0]["n"] == 2
    assert "Spearman(depth, i_ty) per seed" in res[0]["detail"]
    one = evaluate_checks([ok], {"layer_mi": LAYERS.filter(pl.col("seed") == 0)})[0]
    assert one["verdict"] == "inconclusive" and not one["passed"]
    assert "one seed: no interval to decide on" in one["detail"]


def test_compare_claim_per_seed_differences():
    claim = CompareCheck(name="top beats random", table="knockout", value="drop", by="selection",
                         greater="top", lesser="random")
    res = evaluate_checks([claim], {"knockout": KNOCK3})[0]
    assert res["passed"] and res["verdict"] == "holds"
    assert res["observed"] == pytest.approx((0.49 + 0.58 + 0.55) / 3)
    assert "90% interval over seeds" in res["detail"] and "n = 3" in res["detail"]
    close = KNOCK3.with_columns(drop=pl.when(pl.col("selection") == "random")
                                .then(pl.col("drop") + 0.54).otherwise(pl.col("drop")))
    res = evaluate_checks([claim], {"knockout": close})[0]
    assert res["verdict"] == "inconclusive"


def test_compare_claim_counts_seeds_with_a_value_and_never_rows():
    claim = CompareCheck(name="top beats random", table="knockout", value="drop", by="selection",
                         greater="top", lesser="random")
    # seeds 3 and 4 have no top value (null, NaN): they are not seeds of the interval
    extra = pl.DataFrame({"seed": [3, 3, 4, 4], "selection": ["top", "random"] * 2,
                          "drop": [None, 0.01, float("nan"), 0.0]})
    res = evaluate_checks([claim], {"knockout": pl.concat([KNOCK3, extra])})[0]
    assert res["passed"] and res["n"] == 3 and "seed(s) [3, 4] have rows but no value" \
        in res["detail"]
    # two sites of one seed are one observation, not two
    sites = KNOCK3.with_columns(site=pl.lit("a"))
    res = evaluate_checks([claim], {"knockout": pl.concat(
        [sites, sites.with_columns(site=pl.lit("b"))])})[0]
    assert res["n"] == 3
    # a table without seeds has no interval over seeds
    res = evaluate_checks([claim], {"knockout": KNOCK3.drop("seed")})[0]
    assert res["verdict"] == "inconclusive" and "no column(s) ['seed']" in res["detail"]


def test_bound_claim_and_unevaluable_claims_are_inconclusive_with_reason():
    claims = [BoundCheck(name="small", table="layer_mi", value="i_ty", max=1.0, aggregate="all"),
              BoundCheck(name="mean", table="layer_mi", value="i_ty", min=0.5, aggregate="mean"),
              BoundCheck(name="no table", table="nope", value="x", min=0),
              BoundCheck(name="no column", table="layer_mi", value="x", min=0),
              BoundCheck(name="no rows", table="layer_mi", value="i_ty", min=0,
                         filter={"state": "random"})]
    res = evaluate_checks(claims, {"layer_mi": LAYERS})
    # per-seed means 0.375 and 0.4: the 90% interval [0.30, 0.49] lies below 0.5
    assert [r["verdict"] for r in res] == ["holds", "does not hold", "inconclusive",
                                           "inconclusive", "inconclusive"]
    assert "every one of 8 values is ≤ 1 (a fact about the rows, not a test)" in res[0]["detail"]
    assert "no table 'nope'" in res[2]["detail"]
    assert "no column(s) ['x']" in res[3]["detail"]
    assert "no rows of 'layer_mi' match filter {'state': 'random'}" in res[4]["detail"]
    with pytest.raises(ValueError, match="needs min, max or both"):
        BoundCheck(name="x", table="t", value="v")


def test_checks_in_a_spec_are_validated_with_locations(pm):
    from conftest import TINY_SPEC

    text = TINY_SPEC + textwrap.dedent("""\
        checks:
          - {name: ok, kind: trend, table: layer_mi, value: i_ty}
          - {name: bad, kind: comparee, table: knockout, value: drop}
          - {name: worse, kind: bound, table: layer_mi, value: i_ty, mx: 1}
        """)
    with pytest.raises(SpecError) as exc:
        load_spec_text(text, "c.yaml", pm=pm)
    problems = "\n".join(exc.value.problems)
    assert "c.yaml:14: checks.1.kind: unknown check kind 'comparee'; valid: trend, compare, " \
           "bound, equivalence (did you mean 'compare'?)" in problems
    assert "c.yaml:15: checks.2.mx: unknown field" in problems and "did you mean 'max'" in problems


def test_tiny_profile_keeps_experiment_sites_and_estimator(pm):
    assert tiny_arch("vgg16_bn") == "mi_probe_tiny_vgg"
    assert tiny_arch("resnet50") == "test_resnet" and tiny_arch("deit_small") == "deit_small"
    raw = {"name": "p", "seeds": [0, 1, 2, 3, 4],
           "data": {"kind": "imagefolder", "root": "/nowhere", "image_size": 224},
           "model": {"arch": "vgg16", "head": "paper_vgg", "weights": "w.safetensors",
                     "train": {"epochs": 200, "num_workers": 8}},
           "sites": {"include": ["*.post_act"]}, "estimator": {"kind": "histogram", "bins": 30},
           "experiment": {"kind": "knockout", "q": [0.5]}}
    tiny = apply_profile(raw, "tiny")
    assert raw["model"]["arch"] == "vgg16"  # the input is not modified
    assert tiny["model"]["arch"] == "mi_probe_tiny_vgg" and tiny["model"]["weights"] == "train"
    assert tiny["model"]["train"] == {"epochs": 2, "num_workers": 0}
    assert tiny["data"]["kind"] == "synthetic" and tiny["data"]["n_classes"] == 10
    assert tiny["seeds"] == [0, 1]
    assert tiny["experiment"] == raw["experiment"] and tiny["sites"] == raw["sites"]
    assert tiny["estimator"] == raw["estimator"]
    with pytest.raises(SpecError, match="unknown profile 'huge'"):
        apply_profile(raw, "huge")


def test_tiny_profile_keeps_only_transplant_pairs_of_kept_seeds():
    raw = {"seeds": [0, 1, 2], "experiment": {"kind": "transplant",
                                               "pairs": [[0, 1], [1, 2], [2, 0]]}}
    assert apply_profile(raw, "tiny")["experiment"]["pairs"] == [[0, 1]]
    raw["experiment"]["pairs"] = [[1, 2], [2, 0]]
    assert "pairs" not in apply_profile(raw, "tiny")["experiment"]  # default pairs
    assert raw["experiment"]["pairs"] == [[1, 2], [2, 0]]  # the input is not modified
    raw["experiment"]["pairs"] = [[1, 2], "0-1"]  # malformed: left for validation to name
    assert apply_profile(raw, "tiny")["experiment"]["pairs"] == ["0-1"]
    other = {"seeds": [0, 1, 2], "experiment": {"kind": "plugin_kind", "pairs": [[1, 2]]}}
    assert apply_profile(other, "tiny")["experiment"]["pairs"] == [[1, 2]]  # not transplant's


GOOD = """\
name: good
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16}
model: {arch: resnet18, weights: train, train: {epochs: 1, batch_size: 16, lr: 0.05}}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: layer_mi, states: [trained]}
checks:
  - {name: values are finite and capped, kind: bound, table: layer_mi, value: i_xt, min: 0, max: 2.08}
"""


@pytest.fixture
def spec_dir(pytester):
    specs = pytester.mkdir("specs")
    (specs / "good.yaml").write_text(GOOD)
    (specs / "broken.yaml").write_text(GOOD.replace("bins: 8", "bins: -1").replace("good", "broken"))
    (specs / "nosites.yaml").write_text(GOOD.replace('"*.post_add"', '"layer9.*"')
                                        .replace("good", "nosites"))
    (specs / "claim.yaml").write_text(GOOD.replace("max: 2.08", "max: 0.0")
                                      .replace("name: good", "name: claim"))
    return specs


def test_pytest_collects_every_spec_stage_with_readable_failures(pytester, spec_dir):
    result = pytester.runpytest("specs", "-p", "no:cacheprovider", "-rfs")
    # validate is `mi-probe validate`: a site pattern that matches nothing fails there
    result.assert_outcomes(passed=4 + 3, failed=3, skipped=3 + 3)
    out = result.stdout.str()
    assert "Traceback" not in out
    assert "specs/broken.yaml [validate]" in out
    assert "broken.yaml:5: estimator.bins: Input should be greater than 1 (got -1)" in out
    assert "specs/nosites.yaml [validate]" in out
    assert "site pattern(s) ['layer9.*'] match no site" in out
    assert "specs/claim.yaml [checks]" in out
    assert "claim 'values are finite and capped' failed (does not hold): range of i_xt" in out


def test_a_stage_selected_alone_runs_the_stages_it_needs(pytester, spec_dir):
    """``pytest specs -k checks`` deselects validate and run-tiny; the selected stage
    loads and runs the spec itself instead of failing on missing state."""
    result = pytester.runpytest("specs/good.yaml", "specs/broken.yaml", "-p",
                                "no:cacheprovider", "-k", "checks", "-rfs")
    result.assert_outcomes(passed=1, failed=1, deselected=6)
    out = result.stdout.str()
    assert "Traceback" not in out and "AttributeError" not in out
    assert "broken.yaml:5: estimator.bins: Input should be greater than 1 (got -1)" in out


def test_claims_as_warnings(pytester, spec_dir):
    (spec_dir / "broken.yaml").unlink()
    (spec_dir / "nosites.yaml").unlink()
    result = pytester.runpytest("specs", "-p", "no:cacheprovider", "--mi-probe-claims-as-warnings",
                                "-W", "always::UserWarning")
    result.assert_outcomes(passed=8, warnings=1)


def test_mi_probe_check_command(tmp_path, capsys, pm):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "good.yaml").write_text(GOOD)
    (tmp_path / "specs" / "claim.yaml").write_text(GOOD.replace("max: 2.08", "max: 0.0")
                                                   .replace("name: good", "name: claim"))
    code = cli.main(["check", str(tmp_path / "specs"), "--out", str(tmp_path / "runs")], pm=pm)
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL" in out and "[checks] claim 'values are finite and capped' failed" in out
    assert out.count("PASS") == 7 and "2 spec(s), 1 failure(s)" in out
    code = cli.main(["check", str(tmp_path / "specs"), "--out", str(tmp_path / "runs2"),
                     "--claims-as-warnings", "--stages", "validate,run-tiny,checks"], pm=pm)
    assert code == 0 and "WARN" in capsys.readouterr().out


def test_run_strict_exits_3_on_a_failed_claim(tmp_path, capsys, pm, monkeypatch):
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "claim.yaml"
    path.write_text(GOOD.replace("max: 2.08", "max: 0.0"))
    assert cli.main(["run", str(path), "--out", str(tmp_path / "r"), "--no-progress",
                     "--strict"], pm=pm) == 3
    err = capsys.readouterr().err
    assert "claim 'values are finite and capped' does not hold: range of i_xt" in err
    import json

    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["checks"][0]["passed"] is False
    assert "values are finite and capped" in (tmp_path / "r" / "index.html").read_text()
