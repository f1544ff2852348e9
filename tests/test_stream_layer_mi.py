"""layer_mi streamed from the activation store (issue 25, item 2, through the engine):
a capture over ``eval.stream_mb`` is written batch by batch and never held whole, then
estimated chunk by chunk; its tables equal the in-memory run's exactly, a second run
reads the store without running the network, and settings that cannot stream keep the
in-memory path."""

from __future__ import annotations

import os

import polars as pl
import pytest
import torch

from mi_probe._core import capture as capture_mod
from mi_probe._core.store import ActivationStore

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = """\
name: stream
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 8, n_val: 301, image_size: 16, noise: 0.5}
model: {arch: test_resnet, weights: random}
sites: {include: ["*"]}
estimator: ESTIMATOR
experiment: EXPERIMENT
eval: {batch_size: 50, stream_mb: STREAM}
"""


@pytest.fixture(scope="module")
def pm():
    os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")
    from mi_probe._core.plugins import get_plugin_manager

    return get_plugin_manager(autoload=False)


def _run(tmp_path, pm, stream_mb, store, estimator="{kind: histogram, bins: 8}",
         experiment="{kind: layer_mi, states: [random]}", on_nonfinite="error",
         poison=False, engines=None):
    """One unit of the spec; ``poison``: NaN in a layer3 weight of the random model;
    ``engines``: a list the engine is appended to."""
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec_text

    text = (SPEC.replace("STREAM", f"{stream_mb}, on_nonfinite: {on_nonfinite}")
            .replace("ESTIMATOR", estimator).replace("EXPERIMENT", experiment))
    eng = Engine(load_spec_text(text, "stream.yaml", pm=pm), pm, cache_dir=tmp_path / "cache",
                 log=lambda m: None, progress=False, store=store)
    if poison:
        with torch.no_grad():
            eng.model(0, "random").layer3[0].conv1.weight[0].fill_(float("nan"))
    messages: list[str] = []
    eng.progress = messages.append  # type: ignore[method-assign]
    if engines is not None:
        engines.append(eng)
    return eng.experiment.run_unit(eng, "seed=0", None), messages


@pytest.mark.parametrize("estimator", [
    "{kind: histogram, bins: 8}",
    "{kind: histogram, bins: 12, range: quantile, range_quantile: 0.02, correction: miller_madow}",
    "{kind: histogram, bins: 6, binning: equal_count}"])
def test_streamed_layer_mi_equals_in_memory(tmp_path, pm, estimator, monkeypatch):
    memory, said = _run(tmp_path, pm, 1_000_000, False, estimator)
    assert said == ["seed 0: capturing random activations"]
    store = ActivationStore(tmp_path / "acts")
    kept = _spy_captures(monkeypatch)
    streamed, said = _run(tmp_path, pm, 0, store, estimator)
    assert said == ["seed 0: capturing random activations into the store (not kept in memory)"]
    assert kept == [(False, 0)]  # written batch by batch, nothing held
    again, said = _run(tmp_path, pm, 0, store, estimator)
    assert said == ["seed 0: random activations streamed from the activation store"]
    assert len(kept) == 1  # the second run never captured
    for table in ("layer_mi", "channel_mi", "evaluation"):
        assert streamed[table].equals(memory[table]), table
        assert again[table].equals(memory[table]), table
    # diagnostics: the same, less the pattern columns that need the whole matrix
    common = [c for c in memory["diagnostics"].columns if c in streamed["diagnostics"].columns]
    assert streamed["diagnostics"].equals(memory["diagnostics"].select(common))
    assert {"frac_h_y_layer", "frac_unique_patterns"} - set(streamed["diagnostics"].columns) == {
        "frac_h_y_layer", "frac_unique_patterns"}


def test_a_capture_under_the_limit_stays_in_memory(tmp_path, pm):
    store = ActivationStore(tmp_path / "acts")
    _, said = _run(tmp_path, pm, 2048, store)
    assert said == ["seed 0: capturing random activations"]


@pytest.mark.parametrize("experiment", [
    "{kind: layer_mi, states: [random], reduce: joint}",
    "{kind: layer_mi, states: [random], interval: 0.9}"])
def test_quantities_that_need_the_whole_matrix_are_not_streamed(tmp_path, pm, experiment):
    store = ActivationStore(tmp_path / "acts")
    _, said = _run(tmp_path, pm, 0, store, experiment=experiment)
    assert said == ["seed 0: capturing random activations"]


def test_without_a_store_the_capture_is_held_and_the_run_says_so(tmp_path, pm, monkeypatch):
    monkeypatch.setenv("MI_PROBE_STORE", "off")
    tables, said = _run(tmp_path, pm, 0, True)
    assert said[0].startswith("seed 0: random activations (")
    assert "held in memory: no activation store" in said[0]
    assert tables["layer_mi"].height > 0


def test_capture_without_keeping_rows_needs_a_sink():
    with pytest.raises(ValueError, match="keep_rows=False\\) needs a sink"):
        capture_mod.capture(torch.nn.Identity(), [], [], torch.device("cpu"), keep_rows=False)


def test_a_damaged_entry_fails_its_checksum_when_streamed(tmp_path, pm):
    from mi_probe._core.store import StoreCorrupt

    store = ActivationStore(tmp_path / "acts")
    _run(tmp_path, pm, 0, store)
    entry = next(e for e in store.entries() if e.key["site"] != "#outputs")
    marker = store.marker(entry.digest)
    marker["arrays"]["acts"]["checksum"] = "0" * 32
    from mi_probe._core.store.keys import StoreKey

    key = StoreKey(**entry.key)
    (tmp_path / "acts" / "entries" / entry.digest / "ready.json").write_text(
        __import__("json").dumps(marker))
    rows = store.open_rows(key, "acts")
    with pytest.raises(StoreCorrupt, match="does not match its checksum"):
        for _ in rows.chunks():
            pass


def _spy_captures(monkeypatch) -> list[tuple[bool, int]]:
    """Record (keep_rows, sites held) of every capture the engine runs."""
    kept: list[tuple[bool, int]] = []
    real = capture_mod.capture

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        kept.append((kwargs.get("keep_rows", True), len(out.acts)))
        return out

    monkeypatch.setattr(capture_mod, "capture", spy)
    return kept


@pytest.mark.parametrize("mass", ["raw", "null_subtracted", "miller_madow"])
def test_streamed_concentration_equals_in_memory(tmp_path, pm, mass, monkeypatch):
    """Channel masses of every kind (the labels and every null draw counted in one
    pass; Miller–Madow by a second streamed estimator) give the in-memory tables."""
    experiment = f"{{kind: concentration, states: [random], mass: {mass}, top_k: [0.25]}}"
    estimator = "{kind: histogram, bins: 6, range: quantile, range_quantile: 0.05}"
    memory, said = _run(tmp_path, pm, 1_000_000, False, estimator, experiment)
    assert said == ["seed 0: capturing random activations (halting after the deepest site)"]
    kept = _spy_captures(monkeypatch)
    streamed, said = _run(tmp_path, pm, 0, ActivationStore(tmp_path / "acts"), estimator,
                          experiment)
    assert said == ["seed 0: capturing random activations into the store (not kept in memory)"]
    assert kept == [(False, 0)]
    for table in ("concentration", "channel_mass"):
        assert streamed[table].equals(memory[table]), table
    assert memory["channel_mass"]["i_ty"].sum() > 0  # a real comparison, not of zeros


def test_streamed_layer_pairs_reads_only_the_chosen_channels(tmp_path, pm, monkeypatch):
    """With a null, each site's max_channels subset is read from the store (never the
    whole capture) and every value, null included, equals the in-memory run's."""
    experiment = "{kind: layer_pairs, states: [random], max_channels: 3, null_draws: 2}"
    memory, _ = _run(tmp_path, pm, 1_000_000, False, experiment=experiment)
    kept = _spy_captures(monkeypatch)
    streamed, said = _run(tmp_path, pm, 0, ActivationStore(tmp_path / "acts"),
                          experiment=experiment)
    assert said[0] == ("seed 0: capturing random activations into the store (not kept in "
                       "memory)")
    assert kept == [(False, 0)]
    assert streamed["layer_pairs"].equals(memory["layer_pairs"])
    assert memory["layer_pairs"]["mi_null"].null_count() == 0
    assert (memory["layer_pairs"]["n_pairs"] <= 9).all()  # the subset was taken


def test_layer_pairs_without_a_null_counts_pairs_chunk_by_chunk(tmp_path, pm, monkeypatch):
    """null_draws: 0 with a streaming estimator: pair MI from the estimator's streamed
    states (``pair_mi_streamed``), never ``pair_mi`` on a matrix; equal to the
    in-memory values to float64 rounding."""
    from mi_probe.builtin.estimators.histogram import HistogramEstimator

    experiment = "{kind: layer_pairs, states: [random], max_channels: 4, null_draws: 0}"
    memory, _ = _run(tmp_path, pm, 1_000_000, False, experiment=experiment)
    calls: list[str] = []
    real_pair, real_streamed = HistogramEstimator.pair_mi, HistogramEstimator.pair_mi_streamed

    def pair(self, a, b):
        calls.append("pair_mi")
        return real_pair(self, a, b)

    def streamed_pair(self, a, b):
        calls.append("pair_mi_streamed")
        return real_streamed(self, a, b)

    monkeypatch.setattr(HistogramEstimator, "pair_mi", pair)
    monkeypatch.setattr(HistogramEstimator, "pair_mi_streamed", streamed_pair)
    streamed, _ = _run(tmp_path, pm, 0, ActivationStore(tmp_path / "acts"),
                       experiment=experiment)
    sites = memory["layer_pairs"].filter(pl.col("distance") == 0).height
    assert calls == ["pair_mi_streamed"] * (sites * (sites + 1) // 2)
    keys = ["site", "site_b"]
    joined = memory["layer_pairs"].join(streamed["layer_pairs"], on=keys, suffix="_s")
    assert joined.height == memory["layer_pairs"].height
    assert (joined["mi"] - joined["mi_s"]).abs().max() < 1e-12
    assert joined["mi"].min() > 0


@pytest.mark.parametrize("experiment", ["{kind: layer_mi, states: [random]}",
                                        "{kind: concentration, states: [random], mass: raw}"])
def test_streamed_sites_with_nan_follow_eval_on_nonfinite(tmp_path, pm, experiment):
    """A streamed capture is checked as a held one: NaN raises naming the site, or with
    on_nonfinite: skip the site is left out and the tables equal the in-memory run's."""
    from mi_probe.errors import NonFiniteActivationError

    store = ActivationStore(tmp_path / "acts")
    with pytest.raises(NonFiniteActivationError,
                       match=r"site 'layer3\.0\.\w+' \(random model, seed 0\) has \d+ "
                             r"non-finite pooled values"):
        _run(tmp_path, pm, 0, store, experiment=experiment, poison=True)
    engines: list = []
    memory, _ = _run(tmp_path, pm, 1_000_000, False, experiment=experiment,
                     on_nonfinite="skip", poison=True, engines=engines)
    streamed, said = _run(tmp_path, pm, 0, store, experiment=experiment,
                          on_nonfinite="skip", poison=True, engines=engines)
    assert "streamed from the activation store" in said[0]  # the entry the error run wrote
    table = "layer_mi" if "layer_mi" in experiment else "concentration"
    assert streamed[table].equals(memory[table])
    kept = set(memory[table]["site"])
    assert kept and not any(site.startswith("layer3.0.") for site in kept)
    warned = [eng.warnings for eng in engines]
    assert warned[0] == warned[1] and any("left out of the tables" in w for w in warned[1])
