"""Interventions (builtin/interventions/) on hand-made tensors, and through the engine:
the cached-site fast path must give the same logits as the forward-hook path."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mi_probe._core import capture as capture_mod
from mi_probe.builtin.interventions.energy import EnergyKnockout, EnergyParams
from mi_probe.builtin.interventions.knockout import Knockout, KnockoutParams
from mi_probe.builtin.interventions.perturb import Perturb, PerturbParams
from mi_probe.builtin.interventions.shuffle import Shuffle, ShuffleParams
from mi_probe.errors import EstimatorError, SpecError
from mi_probe.interfaces import Intervention, Site

NCHW = Site("s", "m", "post_add", channels=6, depth=0, layout="nchw")
NLC = Site("t", "m", "tokens", channels=6, depth=0, layout="nlc")


pytestmark = pytest.mark.usefixtures("one_thread")


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _calibrate_apply(iv, x, site, channels, sizes, seed=0):
    """Run an intervention the way the engine does: reset, calibrate batch by batch (when
    needed), then apply batch by batch with ``start`` offsets."""
    iv.reset(_gen(seed))
    bounds, start = [], 0
    for size in sizes:
        bounds.append((start, start + size))
        start += size
    assert start == x.shape[0]
    if iv.needs_calibration:
        for a, b in bounds:
            iv.calibrate(x[a:b], site, channels, a)
    return torch.cat([iv(x[a:b], site, channels, a) for a, b in bounds])


# -------------------------------------------------------------------- registry


def test_registered_interventions(pm):
    entries = pm.registry.entries("interventions")
    assert {"knockout", "energy", "shuffle", "perturb"} <= set(entries)
    built = {name: pm.registry.build("interventions", params) for name, params in (
        ("knockout", KnockoutParams()), ("energy", EnergyParams()),
        ("shuffle", ShuffleParams()), ("perturb", PerturbParams(alpha=0.5)))}
    assert type(built["knockout"]) is Knockout and built["knockout"].variant == "plain"
    assert type(built["energy"]) is EnergyKnockout and built["energy"].variant == "energy"
    assert type(built["shuffle"]) is Shuffle and built["shuffle"].needs_calibration
    assert type(built["perturb"]) is Perturb and built["perturb"].params.alpha == 0.5
    for iv in built.values():
        assert isinstance(iv, Intervention)


def test_intervention_params_are_validated():
    with pytest.raises(ValidationError, match="greater than 0"):
        PerturbParams(alpha=0)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        KnockoutParams(alpha=1.0)


# -------------------------------------------------------------------- knockout


@pytest.mark.parametrize("site,shape,axis", [(NCHW, (5, 6, 3, 4), 1), (NLC, (5, 7, 6), 2)])
def test_knockout_zeroes_exactly_the_chosen_channels(site, shape, axis):
    x = _x(*shape) + 3.0  # no accidental zeros
    keep = x.clone()
    channels = torch.tensor([1, 4])
    out = Knockout(KnockoutParams())(x, site, channels, 0)
    assert torch.equal(x, keep)  # the input is never modified in place
    moved, orig = out.movedim(axis, -1), x.movedim(axis, -1)
    assert (moved[..., [1, 4]] == 0).all()
    others = [0, 2, 3, 5]
    assert torch.equal(moved[..., others], orig[..., others])
    assert out.shape == x.shape and out.data_ptr() != x.data_ptr()


def test_knockout_of_no_channel_is_identity():
    x = _x(3, 6, 2, 2)
    out = Knockout(KnockoutParams())(x, NCHW, torch.empty(0, dtype=torch.long), 0)
    assert torch.equal(out, x)


# ---------------------------------------------------------------------- energy


@pytest.mark.parametrize("site,shape,axis", [(NCHW, (8, 6, 3, 3), 1), (NLC, (8, 5, 6), 2)])
def test_energy_keeps_per_sample_norm(site, shape, axis):
    x = _x(*shape, seed=1).relu() + 0.01
    x[3] *= 50.0  # samples with very different norms
    keep = x.clone()
    channels = torch.tensor([0, 2, 5])
    out = EnergyKnockout(EnergyParams())(x, site, channels, 0)
    assert torch.equal(x, keep)
    before, after = x.flatten(1).norm(dim=1), out.flatten(1).norm(dim=1)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=0)
    moved, orig = out.movedim(axis, -1), x.movedim(axis, -1)
    assert (moved[..., [0, 2, 5]] == 0).all()
    # remaining channels: one scale factor per sample, the same for every entry
    ratio = (moved[..., [1, 3, 4]] / orig[..., [1, 3, 4]]).flatten(1)
    assert (ratio > 1).all()
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-5, atol=0)
    # and that factor is the norm ratio
    kept_norm = orig[..., [1, 3, 4]].flatten(1).norm(dim=1)
    torch.testing.assert_close(ratio[:, 0], before / kept_norm, rtol=1e-5, atol=0)


def test_energy_all_channels_gives_zeros_not_nan():
    x = _x(4, 6, 2, 2)
    out = EnergyKnockout(EnergyParams())(x, NCHW, torch.arange(6), 0)
    assert torch.isfinite(out).all() and (out == 0).all()
    # a sample whose only energy sits in the chosen channels: zeros, no NaN / Inf
    y = torch.zeros(3, 6, 2, 2)
    y[:, 1] = 2.0
    y[2, 4] = 1.0
    out = EnergyKnockout(EnergyParams())(y, NCHW, torch.tensor([1]), 0)
    assert torch.isfinite(out).all()
    assert (out[:2] == 0).all()
    assert out[2].norm().item() == pytest.approx(y[2].norm().item(), rel=1e-5)


# --------------------------------------------------------------------- shuffle


def _matching_rows(out_c, x_c):
    """For each output sample, the index of the input sample with identical values."""
    flat_out, flat_x = out_c.flatten(1), x_c.flatten(1)
    eq = (flat_out[:, None, :] == flat_x[None, :, :]).all(-1)
    assert (eq.sum(1) == 1).all(), "every shuffled row must come from exactly one sample"
    return eq.int().argmax(1)


@pytest.mark.parametrize("site,shape,axis", [(NCHW, (23, 6, 3, 2), 1), (NLC, (23, 4, 6), 2)])
def test_shuffle_permutes_chosen_channels_across_samples(site, shape, axis):
    x = _x(*shape, seed=2)
    keep = x.clone()
    channels = torch.tensor([0, 3, 4])
    out = _calibrate_apply(Shuffle(ShuffleParams()), x, site, channels, [7, 10, 6], seed=11)
    assert torch.equal(x, keep)
    moved, orig = out.movedim(axis, 1), x.movedim(axis, 1)  # (N, C, ...)
    for c in (1, 2, 5):
        assert torch.equal(moved[:, c], orig[:, c])
    perms = []
    for c in channels.tolist():
        # multiset of values equal: a permutation of the originals across samples
        assert torch.equal(moved[:, c].flatten().sort().values, orig[:, c].flatten().sort().values)
        perms.append(_matching_rows(moved[:, c], orig[:, c]))
    assert perms[0].sort().values.tolist() == list(range(shape[0]))  # a true permutation
    assert all(torch.equal(p, perms[0]) for p in perms[1:])  # same one for every channel
    assert (perms[0] != torch.arange(shape[0])).sum() >= shape[0] // 2  # actually shuffled


def test_shuffle_is_deterministic_per_seed_and_batching_does_not_matter():
    x = _x(30, 6, 2, 2, seed=3)
    ch = torch.tensor([2, 5])
    a = _calibrate_apply(Shuffle(ShuffleParams()), x, NCHW, ch, [11, 4, 15], seed=5)
    b = _calibrate_apply(Shuffle(ShuffleParams()), x, NCHW, ch, [11, 4, 15], seed=5)
    c = _calibrate_apply(Shuffle(ShuffleParams()), x, NCHW, ch, [11, 4, 15], seed=6)
    one = _calibrate_apply(Shuffle(ShuffleParams()), x, NCHW, ch, [30], seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(a, one)  # the permutation is over the whole evaluation set
    # reset with the same seed after use gives the same result again (no leftover state)
    iv = Shuffle(ShuffleParams())
    first = _calibrate_apply(iv, x, NCHW, ch, [10, 20], seed=5)
    again = _calibrate_apply(iv, x, NCHW, ch, [10, 20], seed=5)
    assert torch.equal(first, again) and torch.equal(first, a)


def test_shuffle_calibration_out_of_order_and_errors():
    x = _x(12, 6, 2, 2, seed=4)
    ch = torch.tensor([1])
    iv = Shuffle(ShuffleParams())
    iv.reset(_gen(0))
    iv.calibrate(x[5:], NCHW, ch, 5)  # batches may arrive in any order
    iv.calibrate(x[:5], NCHW, ch, 0)
    out = torch.cat([iv(x[:5], NCHW, ch, 0), iv(x[5:], NCHW, ch, 5)])
    assert torch.equal(out, _calibrate_apply(Shuffle(ShuffleParams()), x, NCHW, ch, [5, 7], 0))

    fresh = Shuffle(ShuffleParams())
    with pytest.raises(EstimatorError, match="shuffle intervention was applied without calibration"):
        fresh(x, NCHW, ch, 0)
    fresh.reset(_gen(0))
    with pytest.raises(EstimatorError, match="without calibration"):
        fresh(x, NCHW, ch, 0)
    fresh.calibrate(x[:4], NCHW, ch, 0)
    fresh.calibrate(x[6:], NCHW, ch, 6)
    with pytest.raises(EstimatorError, match="a batch starts at 6, expected 4"):
        fresh(x[:4], NCHW, ch, 0)
    short = Shuffle(ShuffleParams())
    short.reset(_gen(0))
    short.calibrate(x[:4], NCHW, ch, 0)
    with pytest.raises(EstimatorError, match="calibrated on 4 samples but is applied to samples 2..5"):
        short(x[:4], NCHW, ch, 2)


# --------------------------------------------------------------------- perturb


def test_perturb_noise_scale_matches_alpha_times_channel_std():
    n = 4000
    x = _x(n, 6, 2, 2, seed=5)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0]).view(1, 6, 1, 1)
    x = x * scales + 1.0
    keep = x.clone()
    ch = torch.tensor([0, 2, 3])
    alpha = 0.7
    out = _calibrate_apply(Perturb(PerturbParams(alpha=alpha)), x, NCHW, ch, [1500, 1000, 1500],
                           seed=9)
    assert torch.equal(x, keep)
    for c in (1, 4, 5):
        assert torch.equal(out[:, c], x[:, c])
    noise = (out - x)[:, ch].transpose(0, 1).reshape(3, -1).double()  # 16000 draws each
    channel_std = x[:, ch].transpose(0, 1).reshape(3, -1).double().std(dim=1)
    # std of 16000 gaussian draws has relative s.e. ~0.6 %; allow 4 %
    torch.testing.assert_close(noise.std(dim=1), alpha * channel_std, rtol=0.04, atol=0)
    assert (noise.mean(dim=1).abs() < 0.05 * alpha * channel_std).all()
    # calibration uses all positions of the whole evaluation set
    iv = Perturb(PerturbParams(alpha=alpha))
    _calibrate_apply(iv, x, NCHW, ch, [1500, 1000, 1500])
    torch.testing.assert_close(iv.std(), channel_std, rtol=1e-3, atol=0)


def test_perturb_is_deterministic_per_seed_and_nlc():
    x = _x(50, 5, 6, seed=6)
    ch = torch.tensor([1, 5])
    run = lambda seed: _calibrate_apply(Perturb(PerturbParams(alpha=2.0)), x, NLC, ch,  # noqa: E731
                                        [20, 30], seed=seed)
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[..., [0, 2, 3, 4]], x[..., [0, 2, 3, 4]])
    assert ((a - x)[..., [1, 5]].abs() > 0).all()


def test_perturb_without_calibration_raises():
    x = _x(4, 6, 2, 2)
    iv = Perturb(PerturbParams())
    with pytest.raises(EstimatorError, match="perturb intervention was applied without calibration"):
        iv(x, NCHW, torch.tensor([0]), 0)
    iv.reset(_gen(1))
    with pytest.raises(EstimatorError, match="without calibration"):
        iv(x, NCHW, torch.tensor([0]), 0)


# ------------------------------------------------------------ through the engine

ENGINE_SPEC = """\
name: iv
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 8, n_val: 37, image_size: 16, noise: 0.5}
model: {arch: test_resnet, weights: random}
sites: {include: ["*"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: layer_mi, states: [random]}
eval: {batch_size: 10}
"""


class Identity:
    name = "identity"
    variant = "identity"
    needs_calibration = False

    def reset(self, generator):
        pass

    def calibrate(self, output, site, channels, start):
        pass

    def __call__(self, output, site, channels, start):
        return output


@pytest.fixture(scope="module")
def engine(tmp_path_factory, pm):
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    folder = tmp_path_factory.mktemp("iv")
    path = folder / "iv.yaml"
    path.write_text(ENGINE_SPEC)
    eng = Engine(load_spec(path, pm=pm), pm, cache_dir=folder / "cache", log=lambda m: None,
                 progress=False)
    model = eng.model(0, "random")
    return eng, model, {s.name: s for s in eng.sites(model)}


def _no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _plain_logits(eng, model, subset=None):
    xs = torch.stack([eng.eval_set[i][0] for i in (subset if subset is not None
                                                    else range(len(eng.eval_set)))])
    with torch.no_grad():
        return model(xs)


def _both_paths(eng, model, items, monkeypatch, **kw):
    """Logits through the fast path (asserting it was taken) and the hook path."""
    calls = []
    real = capture_mod.capture

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_mod, "capture", spy)
    monkeypatch.setattr(eng.spec.eval, "site_cache_mb", 4096)
    fast = eng.evaluate(model, items(), generator=_gen(21), **kw)
    assert calls == [], "the fast path must not run full forward passes with hooks"
    assert _no_hooks(model)
    monkeypatch.setattr(eng.spec.eval, "site_cache_mb", 0)
    slow = eng.evaluate(model, items(), generator=_gen(21), **kw)
    assert calls == [1]
    assert _no_hooks(model)
    return fast, slow


KINDS = [("knockout", lambda: Knockout(KnockoutParams())),
         ("energy", lambda: EnergyKnockout(EnergyParams())),
         ("shuffle", lambda: Shuffle(ShuffleParams())),
         ("perturb", lambda: Perturb(PerturbParams(alpha=1.5)))]


@pytest.mark.parametrize("kind,make", KINDS, ids=[k for k, _ in KINDS])
def test_fast_path_equals_hook_path(engine, monkeypatch, kind, make):
    eng, model, sites = engine
    site = sites["layer2.0.post_add"]
    channels = torch.tensor([0, 3, 5, 17, 40])
    base = _plain_logits(eng, model)
    fast, slow = _both_paths(eng, model, lambda: [(site, make(), channels)], monkeypatch)
    assert fast.logits.shape == slow.logits.shape == (37, 3)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=0)
    assert torch.equal(fast.labels, slow.labels)
    assert (fast.logits - base).abs().max() > 1e-3  # the intervention did something

    subset = torch.tensor([36, 0, 5, 11, 12, 29, 2])
    fast_s, slow_s = _both_paths(eng, model, lambda: [(site, make(), channels)], monkeypatch,
                                 subset=subset)
    assert fast_s.logits.shape == (7, 3)
    torch.testing.assert_close(fast_s.logits, slow_s.logits, atol=1e-5, rtol=0)
    labels = torch.tensor([eng.eval_set[int(i)][1] for i in subset])
    assert torch.equal(fast_s.labels, labels) and torch.equal(slow_s.labels, labels)
    if kind in ("knockout", "energy"):  # per-sample: a subset gives the same rows
        torch.testing.assert_close(fast_s.logits, fast.logits[subset], atol=1e-5, rtol=0)


def test_two_interventions_on_one_site_compose_in_both_paths(engine, monkeypatch):
    eng, model, sites = engine
    site = sites["layer1.0.post_add"]
    items = lambda: [(site, Knockout(KnockoutParams()), torch.tensor([1, 2])),  # noqa: E731
                     (site, Shuffle(ShuffleParams()), torch.tensor([2, 7, 9]))]
    fast, slow = _both_paths(eng, model, items, monkeypatch)
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("site_name", ["stem", "layer1.0.post_add", "layer2.0.post_add",
                                       "layer3.0.post_add", "layer4.0.post_add"])
def test_suffix_reproduces_the_model(engine, monkeypatch, site_name):
    eng, model, sites = engine
    site = sites[site_name]
    fast, slow = _both_paths(eng, model,
                             lambda: [(site, Identity(), torch.empty(0, dtype=torch.long))],
                             monkeypatch)
    base = _plain_logits(eng, model)
    torch.testing.assert_close(fast.logits, base, atol=1e-5, rtol=0)
    torch.testing.assert_close(slow.logits, base, atol=1e-5, rtol=0)


def test_pre_add_sites_use_the_hook_path(engine, monkeypatch):
    eng, model, sites = engine
    site = sites["layer3.0.pre_add"]
    calls = []
    real = capture_mod.capture
    monkeypatch.setattr(capture_mod, "capture",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(eng.spec.eval, "site_cache_mb", 4096)
    out = eng.evaluate(model, [(site, Knockout(KnockoutParams()), torch.arange(0, 192, 2))])
    assert calls == [1] and _no_hooks(model)
    assert (out.logits - _plain_logits(eng, model)).abs().max() > 1e-3


def test_hooks_are_removed_when_an_intervention_raises(engine, monkeypatch):
    eng, model, sites = engine

    class Boom(Identity):
        def __call__(self, output, site, channels, start):
            raise RuntimeError("boom")

    for cache_mb in (4096, 0):
        monkeypatch.setattr(eng.spec.eval, "site_cache_mb", cache_mb)
        with pytest.raises(RuntimeError, match="boom"):
            eng.evaluate(model, [(sites["layer2.0.post_add"], Boom(), torch.tensor([0]))])
        assert _no_hooks(model)
        assert not model.training


def test_engine_plugin_builds_and_validates_interventions(engine):
    eng, _, _ = engine
    iv = eng.plugin("interventions", "perturb", alpha=0.25)
    assert isinstance(iv, Perturb) and iv.params.alpha == 0.25
    with pytest.raises(SpecError, match="invalid parameters for intervention 'perturb'"):
        eng.plugin("interventions", "perturb", alpha=-1)
    with pytest.raises(SpecError, match="shufle"):
        eng.plugin("interventions", "shufle")
