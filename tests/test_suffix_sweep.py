"""Knockouts at the suffix floor (issue 25, item 4): sweep points scored from stored
site outputs through the suffix only, several stacked into one pass, optionally
stopped by a paired sequential rule.

What must hold: every path gives the same correctness per image as one knockout at a
time through ``Engine.evaluate`` (in memory, from the store whole, from the store by
chunks); one forward pass writes every site's output and a later engine reads them
without running the network; the sequential interval is the Agresti-Min interval with
Bonferroni looks, and the rule reaches each of its branches."""

from __future__ import annotations

import math
import os
from statistics import NormalDist

import polars as pl
import pytest
import torch

from mi_probe._core.runner import evaluation
from mi_probe.interfaces import SweepPoint
from mi_probe.builtin.interventions.energy import EnergyKnockout, EnergyParams
from mi_probe.builtin.interventions.knockout import Knockout, KnockoutParams
from mi_probe.builtin.interventions.shuffle import Shuffle, ShuffleParams
from mi_probe.errors import SpecError
from mi_probe.functional.sequential import SequentialRule, paired_drop

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------ the paired interval

def test_paired_drop_is_agresti_min_with_bonferroni_looks():
    before = torch.tensor([1] * 60 + [0] * 40, dtype=torch.bool)
    after = before.clone()
    after[:12] = False   # 12 broken
    after[60:63] = True  # 3 fixed
    one = paired_drop(before, after, 0.9)
    assert (one.n, one.broke, one.fixed) == (100, 12, 3)
    assert one.drop == pytest.approx(0.09, abs=1e-15)
    total = 102.0
    p10, p01 = 12.5 / total, 3.5 / total
    centre = p10 - p01
    half = NormalDist().inv_cdf(0.95) * math.sqrt((p10 + p01 - centre ** 2) / total)
    assert one.low == pytest.approx(centre - half, abs=1e-12)
    assert one.high == pytest.approx(centre + half, abs=1e-12)
    five = paired_drop(before, after, 0.9, looks=5)  # alpha / 5 per look: wider
    z5 = NormalDist().inv_cdf(1 - 0.1 / 5 / 2)
    assert five.high - five.low == pytest.approx(
        2 * z5 * math.sqrt((p10 + p01 - centre ** 2) / total), abs=1e-12)
    assert five.width > one.width


def test_paired_drop_unchanged_images_do_not_give_a_zero_width_interval():
    same = torch.ones(50, dtype=torch.bool)
    result = paired_drop(same, same, 0.95)
    assert result.drop == 0.0 and result.width > 0.05


def test_paired_drop_refuses_unpaired_outcomes():
    with pytest.raises(ValueError, match="paired outcomes differ in shape"):
        paired_drop(torch.ones(3, dtype=torch.bool), torch.ones(4, dtype=torch.bool), 0.9)
    with pytest.raises(ValueError, match="level must lie in"):
        paired_drop(torch.ones(3, dtype=torch.bool), torch.ones(3, dtype=torch.bool), 1.0)


def test_sequential_rule_branches():
    rule = SequentialRule(width=0.2, level=0.95, min_images=40, block=16, n_total=100)
    # looks at 48, 64, 80, 96, 100 (the boundaries at or beyond 40 images)
    assert rule.looks == 5
    quiet = torch.ones(32, dtype=torch.bool)
    assert not rule.done(quiet, quiet)  # below min_images, however narrow
    quiet = torch.ones(64, dtype=torch.bool)
    assert rule.done(quiet, quiet)  # nothing changes: narrow interval
    noisy_before = torch.ones(64, dtype=torch.bool)
    noisy_after = torch.arange(64) % 2 == 0  # half broken: wide interval
    assert not rule.done(noisy_before, noisy_after)
    full = torch.ones(100, dtype=torch.bool)
    assert rule.done(full, torch.arange(100) % 2 == 0)  # every image seen: done


# ------------------------------------------------------------ through the engine

SPEC = """\
name: sweep
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 8, n_val: 53, image_size: 16, noise: 0.5}
model: {arch: test_resnet, weights: random}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: knockout, state: random, q: [0.2, 0.5], random_draws: 2,
             fit: [in_sample, cross_fit], mass: raw}
eval: {batch_size: 10}
"""


@pytest.fixture(scope="module")
def pm():
    os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    from mi_probe._core.plugins import get_plugin_manager

    return get_plugin_manager(autoload=False)


def _engine(folder, pm, store, text=SPEC):
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    path = folder / "sweep.yaml"
    path.write_text(text)
    return Engine(load_spec(path, pm=pm), pm, cache_dir=folder / "cache", log=lambda m: None,
                  progress=False, store=store)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("suffix")


def _points(site, n):
    gen = torch.Generator().manual_seed(3)
    half = torch.randperm(n, generator=gen)[: n // 2]
    points = []
    for k, make in enumerate([lambda: Knockout(KnockoutParams()),
                              lambda: EnergyKnockout(EnergyParams())] * 3):
        channels = torch.randperm(site.channels, generator=gen)[: 2 + 3 * k]
        points.append(SweepPoint(make(), channels, None if k % 2 else half))
    return points


class _Handle:
    def __init__(self, undo):
        self.remove = undo


def _forward_calls(eng):
    """Batches the engine draws from its evaluation loader (a hook on the model would
    change its store key: a hooked model's outputs are not its weights')."""
    calls = []
    real = eng.evaluator.loader

    def counted():
        for batch in real():
            calls.append(1)
            yield batch

    eng.evaluator.loader = counted
    eng.loader = counted
    return calls, _Handle(lambda: None)


def test_stacked_stored_and_streamed_equal_one_at_a_time(folder, pm, monkeypatch):
    from mi_probe._core.store import ActivationStore

    store = ActivationStore(folder / "acts")
    plain = _engine(folder, pm, False)
    model = plain.model(0, "random")
    sites = plain.sites(model)
    reference = {}
    monkeypatch.setattr(evaluation, "row_wise", lambda iv: False)
    for site in sites:
        reference[site.name] = plain.evaluate_points(model, site, _points(site, 53))
    monkeypatch.undo()

    first = _engine(folder, pm, store)
    model1 = first.model(0, "random")
    calls, handle = _forward_calls(first)
    got_first = {s.name: first.evaluate_points(model1, s, _points(s, 53), sites=sites)
                 for s in sites}
    handle.remove()
    assert len(calls) == math.ceil(53 / 10)  # ONE pass wrote every site's output
    assert {e.key["reduction"] for e in store.entries() if e.key["site"] in
            {s.name for s in sites}} == {"output"}
    # full outputs are never read as a pooled capture (another reduction, another key)
    said: list[str] = []
    pooled = _engine(folder, pm, store)
    pooled.progress = said.append
    cap = pooled.capture(0, "random")
    assert said == ["seed 0: capturing random activations"]
    assert all(cap.acts[s.name].ndim == 2 for s in sites)

    second = _engine(folder, pm, store)
    model2 = second.model(0, "random")
    calls, handle = _forward_calls(second)
    got_second = {s.name: second.evaluate_points(model2, s, _points(s, 53), sites=sites)
                  for s in sites}
    # by chunks: a budget below every site's output, and tiny store chunks
    streamed = _engine(folder, pm, store)
    monkeypatch.setattr(streamed.spec.eval, "site_cache_mb", 0)
    assert streamed.evaluator.site_source(model2, sites[0]) is None  # 0: no suffix path
    monkeypatch.setattr(streamed.spec.eval, "site_cache_mb", 1)
    monkeypatch.setattr(streamed.spec.eval, "sweep_pass_rows", 0)  # one knockout per pass
    got_streamed = {}
    for s in sites:
        source = streamed.evaluator.site_source(model2, s, sites)
        if source.tensor is not None:  # under 1 MB: read by rows from the store anyway
            keys = streamed._store_keys(model2, [s], "output")
            stored = streamed.store.open_rows(keys[s.name], "acts")
            stored.chunk_rows = 7  # reads that cross chunk boundaries
            streamed._site_source = (keys[s.name].digest, evaluation.SiteOutputs(
                source.labels, source.device, stored=stored))
        assert streamed.evaluator.site_source(model2, s, sites).tensor is None
        got_streamed[s.name] = streamed.evaluate_points(model2, s, _points(s, 53), sites=sites)
    handle.remove()
    assert calls == []  # read from the store: the network never ran
    for name, ref in reference.items():
        for got in (got_first[name], got_second[name], got_streamed[name]):
            assert len(got) == len(ref)
            for a, b in zip(ref, got):
                assert torch.equal(torch.sort(a.rows).values, torch.sort(b.rows).values)
                order_a, order_b = torch.argsort(a.rows), torch.argsort(b.rows)
                assert torch.equal(a.correct[order_a], b.correct[order_b])
    # the knockouts did something somewhere
    assert any(not r.correct.all() for refs in reference.values() for r in refs)


def test_sweep_table_identical_with_and_without_store(folder, pm, tmp_path):
    from mi_probe._core.store import ActivationStore

    tables = []
    for store in (False, ActivationStore(tmp_path / "acts"), ActivationStore(tmp_path / "acts")):
        eng = _engine(folder, pm, store)
        tables.append(eng.experiment.run_unit(eng, "seed=0", None)["knockout"])
    keys = ["fit", "part", "site", "q", "selection", "draw", "variant"]
    cols = [*keys, "accuracy", "baseline_accuracy", "drop", "n_images"]
    first = tables[0].select(cols).sort(keys)
    assert first.height == 3 * 2 * 4 * 2 * len(first["site"].unique())
    for other in tables[1:]:
        assert other.select(cols).sort(keys).equals(first)
    # cross-fitted rows score half the images, in-sample rows all of them
    assert set(first.filter(pl.col("fit") == "in_sample")["n_images"]) == {53}
    halves = first.filter(pl.col("fit") == "cross_fit").group_by("part").agg(
        pl.col("n_images").unique())
    assert all(len(v) == 1 for v in halves["n_images"].to_list())
    assert sum(v[0] for v in halves["n_images"].to_list()) == 53


def test_sequential_sweep_stops_and_reports_its_interval(folder, pm):
    full = _engine(folder, pm, False)
    reference = full.experiment.run_unit(full, "seed=0", None)["knockout"]
    wide = _engine(folder, pm, False, SPEC.replace(
        "mass: raw}", "mass: raw, sequential: {width: 1.9, min_images: 20}}"))
    stopped = wide.experiment.run_unit(wide, "seed=0", None)["knockout"]
    # any interval is narrower than 1.9: every point stops at its first look (20 images)
    assert stopped["stopped_early"].all()
    assert set(stopped["n_images"].to_list()) == {20}
    assert (stopped["drop_ci_low"] <= stopped["drop_ci_high"]).all()
    assert set(stopped["ci_level"].to_list()) == {0.95}
    narrow = _engine(folder, pm, False, SPEC.replace(
        "mass: raw}", "mass: raw, sequential: {width: 0.001, min_images: 20}}"))
    everything = narrow.experiment.run_unit(narrow, "seed=0", None)["knockout"]
    # never narrow enough: every image, the same drops as without the rule
    assert not everything["stopped_early"].any()
    keys = ["fit", "part", "site", "q", "selection", "draw", "variant"]
    assert everything.sort(keys)["drop"].equals(reference.sort(keys)["drop"])


def test_sequential_is_refused_for_random_interventions(folder, pm):
    text = SPEC.replace("kind: knockout,", "kind: shuffle,").replace(
        "mass: raw}", "mass: raw, sequential: {width: 0.1}}")
    with pytest.raises(SpecError, match="sequential stopping is for knockout"):
        eng = _engine(folder, pm, False, text)
        eng.experiment.check_spec(eng.spec, eng.estimator)


def test_random_interventions_keep_the_whole_set_path(folder, pm):
    """A shuffle draws from the batch it sees: scoring it on a subset would change its
    values, so it is evaluated on the whole set and scored afterwards, as before."""
    eng = _engine(folder, pm, False)
    model = eng.model(0, "random")
    site = eng.sites(model)[1]
    half = torch.arange(0, 53, 2)
    point = SweepPoint(Shuffle(ShuffleParams()), torch.tensor([0, 1, 2]), half,
                       torch.Generator().manual_seed(5))
    got = eng.evaluate_points(model, site, [point])[0]
    whole = eng.evaluate(model, [(site, Shuffle(ShuffleParams()), torch.tensor([0, 1, 2]))],
                         generator=torch.Generator().manual_seed(5))
    correct = (whole.logits.argmax(1) == whole.labels).cpu()
    assert torch.equal(got.rows, half) and torch.equal(got.correct, correct[half])


def _run_rule(rule, before, after, order):
    """The images a point uses and its interval, visiting ``order`` a block at a time."""
    for end in range(rule.block, before.numel() + rule.block, rule.block):
        end = min(end, before.numel())
        seen = order[:end]
        if rule.done(before[seen], after[seen]):
            return end, rule.interval(before[seen], after[seen])
    raise AssertionError("the rule never stopped")


def test_sequential_interval_covers_the_full_set_drop_on_planted_outcomes():
    """900 images, 800 correct before; the knockout breaks 90 and fixes 10: the full-set
    drop is 80/900. Over 400 seeded visiting orders the interval at the stopping look
    covers it at least at the stated level, and the rule stops well before 900."""
    n = 900
    before = torch.zeros(n, dtype=torch.bool)
    before[:800] = True
    after = before.clone()
    after[:90] = False     # broken
    after[800:810] = True  # fixed
    truth = (before.double().mean() - after.double().mean()).item()
    assert truth == pytest.approx(80 / 900)
    rule = SequentialRule(width=0.1, level=0.9, min_images=100, block=50, n_total=n)
    covered, used = 0, []
    for seed in range(400):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        end, interval = _run_rule(rule, before, after, order)
        used.append(end)
        covered += interval.low <= truth <= interval.high
        assert interval.width < 0.1 or end == n
    assert covered / 400 >= 0.9
    assert max(used) < n and sum(used) / len(used) < 0.7 * n


def test_site_outputs_over_the_store_budget_are_not_written(folder, pm, tmp_path, monkeypatch):
    """eval.site_store_mb: 0 stores no full site output; the sweep falls back to the
    in-memory cache and its drops are unchanged; the write pass is not repeated."""
    from mi_probe._core.store import ActivationStore

    store = ActivationStore(tmp_path / "acts")
    reference = _engine(folder, pm, False)
    expected = reference.experiment.run_unit(reference, "seed=0", None)["knockout"]
    eng = _engine(folder, pm, store)
    monkeypatch.setattr(eng.spec.eval, "site_store_mb", 0)
    logged: list[str] = []
    eng.log = logged.append
    calls, _ = _forward_calls(eng)
    got = eng.experiment.run_unit(eng, "seed=0", None)["knockout"]
    assert not [e for e in store.entries() if e.key["reduction"] == "output"]
    assert len([m for m in logged if "exceed eval.site_store_mb" in m]) == 1
    sites = got["site"].n_unique()
    # at most the pooled capture's pass, ONE write pass (every site refused: not
    # repeated per site) and the in-memory cache's pass per site
    assert len(calls) <= (2 + sites) * math.ceil(53 / 10)
    keys = ["fit", "part", "site", "q", "selection", "draw", "variant"]
    cols = [*keys, "accuracy", "baseline_accuracy", "drop"]
    assert got.select(cols).sort(keys).equals(expected.select(cols).sort(keys))
