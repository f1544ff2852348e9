"""The worked examples of docs/plugins.md: one plugin per kind, each under 40 lines,
shown verbatim in the document, and each run here (issue 13, item 7).

The examples are real modules in ``docs/examples/``; the document includes them
verbatim and these tests import them as plugins, so what a reader copies is what runs.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import polars as pl
import pytest
import torch

from mi_probe import cli
from mi_probe._core.plugins import get_plugin_manager
from mi_probe.testing import check_estimator

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
DOC = ROOT / "docs" / "plugins.md"
#: the "supporting a new architecture" example is the ConvNeXt plugin's README snippet
ADAPTER = ROOT / "plugins" / "mi-probe-convnext" / "tests" / "readme_adapter.py"
MODULES = sorted(p.stem for p in EXAMPLES.glob("plugin_*.py"))


def doc_blocks() -> list[str]:
    return [m.group(1) for m in re.finditer(r"```python\n(.*?)```", DOC.read_text(), re.S)]


@pytest.fixture(scope="module")
def examples_pm():
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLES))
        yield get_plugin_manager(MODULES, autoload=False)


def test_there_is_an_example_per_kind_of_plugin():
    assert MODULES == ["plugin_dataset", "plugin_estimator", "plugin_executor",
                       "plugin_experiment", "plugin_intervention", "plugin_metric",
                       "plugin_regularizer", "plugin_report"]


@pytest.mark.parametrize("path", [*(EXAMPLES / f"{m}.py" for m in MODULES), ADAPTER],
                         ids=[*MODULES, "adapter"])
def test_each_example_is_short_and_in_the_doc_verbatim(path):
    code = path.read_text()
    assert len(code.splitlines()) < 40, f"{path.name} has {len(code.splitlines())} lines"
    assert code in doc_blocks(), f"docs/plugins.md does not show {path.name} verbatim"


def test_every_example_registers_its_entry(examples_pm):
    registry = examples_pm.registry
    expected = {"estimators": "rank_bins", "datasets": "stripes", "experiments":
                "activation_scale", "metrics": "max_share", "interventions": "negate",
                "regularizers": "activity_l1", "reports": "markdown",
                "executors": "inline_worker"}
    for kind, name in expected.items():
        assert registry.get(kind, name).plugin.startswith("plugin_"), (kind, name)


def test_the_estimator_example_passes_the_conformance_suite(examples_pm):
    entry = examples_pm.registry.get("estimators", "rank_bins")
    # 18 equal-frequency bins put every class boundary of the 9-class problems on an edge
    report = check_estimator(entry.factory(entry.params_model(bins=18)), rhos=(),
                             relu_rho=None)
    assert "uniform_shift" in report.checked and "independent" in report.checked


def test_the_estimator_example_gives_log_k_for_a_channel_that_is_the_label(examples_pm):
    entry = examples_pm.registry.get("estimators", "rank_bins")
    est = entry.factory(entry.params_model(bins=4))
    labels = torch.arange(4).repeat(48)
    acts = torch.stack([labels.double(), torch.zeros(192, dtype=torch.float64)], 1)
    mi = est.label_mi(acts, labels, 4)
    assert mi.dtype == torch.float64 and mi.shape == (2,)
    assert mi[0].item() == pytest.approx(math.log(4), abs=1e-12)
    # a constant channel's ranks follow sample order (a stable sort), here periodic in the
    # label: 4 bins of 48 consecutive samples each hold every class 12 times, so MI is 0
    assert mi[1].item() == pytest.approx(0.0, abs=1e-12)


def test_the_metric_example(examples_pm):
    entry = examples_pm.registry.get("metrics", "max_share")
    metric = entry.factory(entry.params_model())
    assert metric(torch.tensor([3.0, 1.0, 0.0, 0.0])) == {"max_share": 0.75}
    assert math.isnan(metric(torch.zeros(3))["max_share"])


@pytest.mark.parametrize("layout,shape,axis", [("nchw", (2, 4, 3, 3), 1),
                                               ("nhwc", (2, 3, 3, 4), 3)])
def test_the_intervention_example_negates_only_the_chosen_channels(examples_pm, layout,
                                                                   shape, axis):
    from mi_probe.interfaces import Site

    entry = examples_pm.registry.get("interventions", "negate")
    negate = entry.factory(entry.params_model())
    site = Site("s", "m", "post_add", 4, 0, layout)
    x = torch.randn(shape)
    before = x.clone()
    y = negate(x, site, torch.tensor([1, 3]), 0)
    assert torch.equal(x, before)  # the input is not modified
    for c in range(4):
        got, ref = y.select(axis, c), x.select(axis, c)
        assert torch.equal(got, -ref if c in (1, 3) else ref), c


def test_a_run_with_six_example_plugins(examples_pm, tmp_path, monkeypatch, capsys):
    """Dataset, estimator, experiment, regulariser, executor and report writer from the
    examples, in one spec, through the CLI."""
    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "examples.yaml"
    spec.write_text("""\
name: examples
seeds: [0, 1]
data: {kind: stripes, n_per_class: 16, image_size: 16}
model:
  arch: test_resnet
  train: {epochs: 1, batch_size: 16, regularizers: [{kind: activity_l1, weight: 0.01}]}
sites: {include: ["*.post_add"]}
estimator: {kind: rank_bins, bins: 4}
experiment: {kind: activation_scale}
executor: {kind: inline_worker}
report: {formats: [html], writers: [{kind: markdown}]}
checks:
  - {name: every site has a scale, kind: bound, table: scale, value: mean_abs, min: 0}
""")
    out = tmp_path / "run"
    code = cli.main(["run", str(spec), "--out", str(out), "--cache-dir",
                     str(tmp_path / "cache"), "--no-progress"], pm=examples_pm)
    assert code == 0, capsys.readouterr().err
    scale = pl.read_parquet(out / "tables" / "scale.parquet")
    assert set(scale["state"]) == {"trained", "random"} and set(scale["seed"]) == {0, 1}
    assert (scale["mean_abs"] > 0).all()
    summary = pl.read_parquet(out / "tables" / "summary_scale.parquet")
    assert set(summary["mean_abs_n"]) == {2}
    training = pl.read_parquet(out / "tables" / "training.parquet")
    assert set(training["regularizer"]) == {"activity_l1"}
    text = (out / "summary.md").read_text()
    assert "PASS: every site has a scale" in text and "`scale`:" in text
    assert (out / "logs" / "train-train_seed=0.log").is_file() or \
        any((out / "logs").glob("analysis-*.log"))
