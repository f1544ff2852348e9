"""Planted structure end to end: MI ranking + mass-set selection + interventions must
find and hurt the channels that carry the label, and the knockout / semantic knockout /
shuffle / perturb / concentration experiments must write their contract tables.

Three planted set-ups, from the kernels up to full runs:

* activations where two channels are functions of the label and the rest is noise
  (estimator + selection only);
* a hand-built conv net whose channels 0-1 copy a class indicator and 2-7 copy input
  noise (capture + intervention hooks, no timm, no engine);
* a real timm ``test_resnet`` trained through the normal spec path, then planted: at the
  last block every channel outside a set S of 8 is made dead (BN scale 0, bias -1, so
  the post-add ReLU outputs exactly 0) and the classifier is refitted on S. Runs then
  load it with ``weights: <file>.safetensors``.
"""

from __future__ import annotations

import copy
import math

import polars as pl
import pytest
import torch
from torch import nn

from mi_probe import cli
from mi_probe.builtin.estimators.histogram import HistogramEstimator, HistogramParams
from mi_probe.builtin.interventions.energy import EnergyKnockout, EnergyParams
from mi_probe.builtin.interventions.knockout import Knockout, KnockoutParams
from mi_probe.builtin.interventions.shuffle import Shuffle, ShuffleParams
from mi_probe._core.capture import capture
from mi_probe.functional.selection import descending_order, mass_set, random_set
from mi_probe.interfaces import SiteRef
from mi_probe._core.sites import probe_sites

SITE = ("seed", "state", "site", "depth", "site_kind")
#: The contract of ARCHITECTURE.md's table list, written out here (not read from the
#: experiments' declared schemas) so that dropping a column from the code and its
#: declared schema together still fails.
CONTRACT = {
    "knockout": SITE + ("q", "selection", "variant", "n_channels", "accuracy",
                        "baseline_accuracy", "drop"),
    "semantic_knockout": SITE + ("class", "q", "selection", "n_channels", "class_accuracy",
                                 "baseline_class_accuracy", "drop", "other_classes_change"),
    "concentration": SITE + ("gini", "top_k", "top_k_share", "norm_entropy"),
}

K = 4
LAST = "layer4.0.post_add"


pytestmark = pytest.mark.usefixtures("one_thread")


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ------------------------------------------------------ planted activations (kernels)


def test_label_channels_are_ranked_first_and_selected():
    n, c = 800, 10
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % K
    acts = torch.randn(n, c, generator=gen)
    acts[:, 3] = labels.float()              # deterministic functions of the label
    acts[:, 7] = 5.0 - 2.0 * labels.float()
    est = HistogramEstimator(HistogramParams(bins=20))
    v = est.label_mi(acts, labels, K)
    assert v[3].item() == pytest.approx(math.log(K), abs=1e-9)
    assert v[7].item() == pytest.approx(math.log(K), abs=1e-9)
    noise = v[[i for i in range(c) if i not in (3, 7)]]
    assert noise.max().item() < 0.1  # plug-in bias only (about 19*3/1600 = 0.036)
    assert descending_order(v)[:2].tolist() == [3, 7]  # tie broken by the lower index
    top = mass_set(v, 0.5)
    assert top.numel() >= 1 and set(top.tolist()) <= {3, 7}
    assert mass_set(v, 0.9)[:2].tolist() == [3, 7]


# ------------------------------------------------- hand-built planted conv net


def _planted_net() -> nn.Sequential:
    """conv1x1 -> ReLU(inplace) [site] -> pool -> linear. Channel 0/1 = class 0/1
    indicator; channels 2..7 = (positive-shifted) input noise, read only weakly."""
    conv = nn.Conv2d(3, 8, 1)
    head = nn.Linear(8, 2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[1, 1] = 1.0
        for c, w in zip(range(2, 8), (1.0, -1.0, 0.5, 2.0, -0.7, 1.3)):
            conv.weight[c, 2] = w
            conv.bias[c] = 3.0
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0] = head.weight[1, 1] = 1.0
        head.weight[0, 2] = head.weight[1, 3] = 0.02  # noise breaks ties after a knockout
    return nn.Sequential(conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         head).eval()


def _planted_batches(n=240, batch=50):
    gen = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 2
    x = torch.zeros(n, 3, 4, 4)
    x[:, 0] = 2.0 * (y == 0).float().view(-1, 1, 1) + 0.1 * torch.randn(n, 4, 4, generator=gen)
    x[:, 1] = 2.0 * (y == 1).float().view(-1, 1, 1) + 0.1 * torch.randn(n, 4, 4, generator=gen)
    x[:, 2] = torch.randn(n, 4, 4, generator=gen)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)]


def test_hand_built_planted_net_knockout():
    model = _planted_net()
    batches = _planted_batches()
    (site,) = probe_sites(model, [SiteRef("act", "1", "post_act")], batches[0][0][:2])
    assert site.channels == 8 and site.layout == "nchw"
    device = torch.device("cpu")
    cap = capture(model, [site], batches, device)
    baseline = cap.accuracy
    assert baseline == 1.0
    v = HistogramEstimator(HistogramParams(bins=10)).label_mi(cap.acts["act"], cap.labels, 2)
    top2 = descending_order(v)[:2]
    assert sorted(top2.tolist()) == [0, 1]
    assert set(mass_set(v, 0.5).tolist()) <= {0, 1}

    ko = capture(model, [site], batches, device, [(site, Knockout(KnockoutParams()), top2)])
    assert abs(ko.accuracy - 0.5) < 0.15  # near chance
    assert (ko.acts["act"][:, top2] == 0).all()  # captured activations are the intervened ones
    energy = capture(model, [], batches, device, [(site, EnergyKnockout(EnergyParams()), top2)])
    assert abs(energy.accuracy - 0.5) < 0.15
    shuffled = capture(model, [], batches, device, [(site, Shuffle(ShuffleParams()), top2)],
                       generator=torch.Generator().manual_seed(3))
    assert abs(shuffled.accuracy - 0.5) < 0.15
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        noise2 = 2 + random_set(6, 2, gen)
        control = capture(model, [site], batches, device,
                          [(site, Knockout(KnockoutParams()), noise2)])
        assert control.accuracy == baseline
    assert _no_hooks(model)
    assert torch.equal(capture(model, [], batches, device).logits, cap.logits)  # nothing leaked


# ------------------------------------------------- planted timm model, full runs

TRAIN_SPEC = f"""\
name: planted
seeds: [0]
data: {{kind: synthetic, n_classes: {K}, n_train: 128, n_val: 80, image_size: 16, noise: 0.5}}
model:
  arch: test_resnet
  weights: WEIGHTS
  train: {{epochs: 4, batch_size: 16, lr: 0.02}}
sites: {{include: ["*.post_add"]}}
estimator: {{kind: histogram, bins: 8}}
eval: {{batch_size: 40}}
report: {{formats: [png]}}
"""


def _spec(folder, name, experiment, weights="train", extra=""):
    path = folder / f"{name}.yaml"
    text = TRAIN_SPEC.replace("WEIGHTS", str(weights)).replace("name: planted", f"name: {name}")
    path.write_text(text + f"experiment: {experiment}\n" + extra)
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("knockout")


@pytest.fixture(scope="module")
def planted(workdir, pm):
    """Train test_resnet through the spec path (cached under workdir), plant S, save."""
    from mi_probe._core.data import make_loader
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.models import model_meta, save_weights
    from mi_probe._core.spec import load_spec

    spec = load_spec(_spec(workdir, "train", "{kind: layer_mi}"), pm=pm)
    engine = Engine(spec, pm, cache_dir=workdir / "cache", log=lambda m: None, progress=False)
    model = engine.model(0, "trained")
    (site,) = [s for s in engine.sites(model) if s.name == LAST]
    train = capture(model, [site], make_loader(engine.data.train, 64, shuffle=False),
                    engine.device)
    feats, labels = train.acts[LAST].double(), train.labels
    # S: the 8 channels with the largest between/within class variance on the TRAIN set
    means = torch.stack([feats[labels == k].mean(0) for k in range(K)])
    within = torch.stack([feats[labels == k].var(0) for k in range(K)]).mean(0)
    chosen = torch.sort(means.var(0) / (within + 1e-8), descending=True).indices[:8]
    dead = torch.ones(site.channels, dtype=torch.bool)
    dead[chosen] = False
    planted = copy.deepcopy(model)
    block = planted.layer4[0]
    fc = nn.Linear(site.channels, K)
    x = feats.float().masked_fill(dead, 0.0)
    with torch.no_grad():
        for bn in (block.bn2, block.downsample[2]):  # residual and shortcut halves of the sum
            bn.weight[dead] = 0.0
            bn.bias[dead] = -1.0
    opt = torch.optim.LBFGS(fc.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(fc(x), labels) + 1e-3 * fc.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        planted.fc.weight.copy_(fc.weight.masked_fill(dead, 0.0))
        planted.fc.bias.copy_(fc.bias)
    path = workdir / "planted.safetensors"
    save_weights(planted, path, model_meta("test_resnet", K, None, "timm", False))
    return {"path": path, "S": sorted(chosen.tolist()), "dead": dead}


@pytest.fixture
def run_cli(workdir, monkeypatch, pm, capsys):
    """Run a spec through the CLI; checks after every unit that no hook is left."""
    from mi_probe._core.runner.context import Engine

    checked = []
    original = Engine.end_unit

    def end_unit(self):
        for model in self.models._models.values():
            assert _no_hooks(model), "hooks left on a model after the unit"
            checked.append(model)
        return original(self)

    monkeypatch.setattr(Engine, "end_unit", end_unit)
    monkeypatch.chdir(workdir)

    def call(spec_path, out):
        code = cli.main(["run", str(spec_path), "--out", str(out), "--cache-dir",
                         str(workdir / "cache"), "--no-progress"], pm=pm)
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert checked, "no model was checked for leftover hooks"
        return out

    return call


def _table(run_dir, name):
    return pl.read_parquet(run_dir / "tables" / f"{name}.parquet")


def _contract(run_dir, name):
    frame = _table(run_dir, name)
    assert set(CONTRACT[name]) <= set(frame.columns), (name, frame.columns)
    return frame


def _planted_capture(planted, workdir, pm):
    """Evaluation-set activations of the planted model, and the spec's estimator."""
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    spec = load_spec(_spec(workdir, "check", "{kind: layer_mi, states: [trained]}",
                           planted["path"]), pm=pm)
    engine = Engine(spec, pm, cache_dir=workdir / "cache", log=lambda m: None, progress=False)
    return engine.capture(0, "trained"), engine.estimator


def test_planted_model_really_is_planted(planted, workdir, pm):
    cap, _ = _planted_capture(planted, workdir, pm)
    acts = cap.acts[LAST]
    assert (acts[:, planted["dead"]] == 0).all()
    assert (acts[:, planted["S"]].std(0) > 0).all()
    assert cap.accuracy >= 0.9


def test_knockout_ranks_and_hurts_the_planted_channels(planted, run_cli, workdir):
    spec = _spec(workdir, "ko", "{kind: knockout, q: [0.5, 1.0], random_draws: 3}",
                 planted["path"])
    run_dir = run_cli(spec, workdir / "ko")
    ko = _contract(run_dir, "knockout")
    assert set(ko["selection"].unique()) == {"top", "random", "bottom"}
    assert set(ko["variant"].unique()) == {"plain", "energy"}
    assert set(ko["site"].unique()) == {"layer1.0.post_add", "layer2.0.post_add",
                                        "layer3.0.post_add", LAST}
    assert ko.filter(pl.col("selection") == "random")["draw"].n_unique() == 3
    # controls are size-matched to the top set of each (site, q)
    sizes = ko.group_by(["site", "q"]).agg(pl.col("n_channels").n_unique().alias("k"))
    assert (sizes["k"] == 1).all()
    top = ko.filter(pl.col("selection") == "top")
    assert (top["mass"] >= top["q"] - 1e-9).all()
    assert ko["drop"].is_finite().all()
    assert ((ko["baseline_accuracy"] - ko["accuracy"] - ko["drop"]).abs() < 1e-12).all()

    last = ko.filter(pl.col("site") == LAST)
    baseline = last["baseline_accuracy"][0]
    assert baseline >= 0.9
    q_max = last["q"].max()
    at_q = last.filter(pl.col("q") == q_max)
    # only the 8 planted channels hold label MI: the whole-mass set is (at most) S
    assert 1 <= at_q.filter(pl.col("selection") == "top")["n_channels"][0] <= len(planted["S"])
    for variant in ("plain", "energy"):
        part = at_q.filter(pl.col("variant") == variant)
        drop = {s: part.filter(pl.col("selection") == s)["drop"].mean()
                for s in ("top", "random", "bottom")}
        # observed (seed 0): top 0.75 (accuracy 1.0 -> 0.25 = chance), random 0.0, bottom 0.0
        assert drop["top"] >= baseline - 1 / K - 0.05, drop
        assert drop["top"] - drop["random"] >= 0.4, drop
        assert drop["top"] - drop["bottom"] >= 0.4, drop
        assert drop["bottom"] == 0.0  # dead channels: knocking them out changes nothing

    summary = _table(run_dir, "summary_knockout")
    assert {"drop_mean", "drop_ci_low", "drop_ci_high", "n_seeds", "selection", "variant",
            "q"} <= set(summary.columns)
    for name in ("drop_vs_q_plain", "drop_vs_q_energy", "drop_by_depth_plain"):
        assert (run_dir / "figures" / f"{name}.png").is_file(), name


def test_semantic_knockout_hurts_the_class(planted, run_cli, workdir, pm):
    # mass: raw, the paper's definition, checked against the estimator below
    spec = _spec(workdir, "sem", "{kind: semantic_knockout, q: [0.5, 1.0], random_draws: 3, "
                 "mass: raw}", planted["path"])
    text = spec.read_text().replace('include: ["*.post_add"]', f'include: ["{LAST}"]')
    spec.write_text(text)
    run_dir = run_cli(spec, workdir / "sem")
    sem = _contract(run_dir, "semantic_knockout")
    assert sorted(sem["class"].unique()) == list(range(K))
    assert set(sem["selection"].unique()) == {"top", "random", "bottom"}
    sizes = sem.group_by(["site", "q", "class"]).agg(pl.col("n_channels").n_unique().alias("k"))
    assert (sizes["k"] == 1).all()
    top = sem.filter(pl.col("selection") == "top")
    assert (top["class_mass"] >= top["q"] - 1e-9).all()
    assert sem["other_classes_change"].is_finite().all()
    at_q = sem.filter(pl.col("q") == 1.0)
    drop = {s: at_q.filter(pl.col("selection") == s)["drop"].mean()
            for s in ("top", "random", "bottom")}
    # observed (seed 0): top 0.75 (mean over classes), random 0.08, bottom 0.0
    assert drop["top"] - drop["random"] >= 0.4, drop
    assert drop["top"] - drop["bottom"] >= 0.4, drop
    # every class's top set lies inside S (the only channels with class MI)
    assert (top.filter(pl.col("q") == 1.0)["n_channels"] <= len(planted["S"])).all()
    # the sets come from the class-conditional MI I(T_c; 1[Y=k]), not from I(T_c; Y)
    cap, estimator = _planted_capture(planted, workdir, pm)
    acts, labels = cap.acts[LAST], cap.labels
    for k in range(K):
        v = estimator.label_mi(acts, (labels == k).long(), 2)
        for q in (0.5, 1.0):
            row = top.filter((pl.col("class") == k) & (pl.col("q") == q))
            expected = mass_set(v, q)
            assert row["n_channels"].to_list() == [expected.numel()], (k, q)
            assert row["class_mass"][0] == pytest.approx(
                (v[expected].sum() / v.sum()).item(), abs=1e-12)
    for name in ("summary_semantic_knockout", "summary_semantic_knockout_by_q"):
        assert _table(run_dir, name).height > 0
    for name in ("semantic_drop_vs_q", "semantic_other_classes_vs_q", "semantic_drop_per_class"):
        assert (run_dir / "figures" / f"{name}.png").is_file(), name


def test_shuffle_and_perturb_runs(planted, run_cli, workdir):
    shuffle = _spec(workdir, "shuf", "{kind: shuffle, q: [0.5, 1.0], random_draws: 2}",
                    planted["path"])
    run_dir = run_cli(shuffle, workdir / "shuf")
    table = _table(run_dir, "shuffle")
    assert set(table["variant"].unique()) == {"shuffle"}
    assert set(CONTRACT["knockout"]) <= set(table.columns)  # shuffle shares the sweep's
    last = table.filter((pl.col("site") == LAST) & (pl.col("q") == 1.0))
    drop = {s: last.filter(pl.col("selection") == s)["drop"].mean()
            for s in ("top", "random", "bottom")}
    # observed (seed 0): top 0.725, random 0.0, bottom 0.0
    assert drop["top"] - max(drop["random"], drop["bottom"]) >= 0.4, drop
    assert _table(run_dir, "summary_shuffle")["drop_mean"].is_finite().all()
    assert (run_dir / "figures" / "drop_vs_q_shuffle.png").is_file()

    perturb = _spec(workdir, "pert", "{kind: perturb, q: [1.0], alphas: [0.5, 4.0], "
                    "selections: [top, random], random_draws: 2}", planted["path"])
    run_dir = run_cli(perturb, workdir / "pert")
    table = _table(run_dir, "perturb")
    assert "alpha" in table.columns and sorted(table["alpha"].unique()) == [0.5, 4.0]
    assert set(table["selection"].unique()) == {"top", "random"}
    last = table.filter(pl.col("site") == LAST)
    top = last.filter(pl.col("selection") == "top").sort("alpha")["drop"].to_list()
    rnd = last.filter(pl.col("selection") == "random")["drop"].mean()
    # observed (seed 0): top 0.30 at alpha 0.5, 0.66 at alpha 4; random 0.0
    assert top[1] >= top[0] and top[1] - rnd >= 0.3, (top, rnd)
    summary = _table(run_dir, "summary_perturb")
    assert "alpha" in summary.columns and summary["drop_mean"].is_finite().all()
    assert (run_dir / "figures" / "drop_vs_q_0.5.png").is_file()


CONC_COLUMNS = ["gini", "top_k_share", "norm_entropy"]


def test_concentration_trained_and_random(planted, run_cli, workdir):
    # weights: train reuses the model the planted fixture trained (same cache key)
    spec = _spec(workdir, "conc", "{kind: concentration, top_k: [0.1, 0.5]}")
    run_dir = run_cli(spec, workdir / "conc")
    conc = _contract(run_dir, "concentration")
    assert conc.height == 2 * 4 * 2  # states x post_add sites x top_k
    assert set(conc["state"].unique()) == {"trained", "random"}
    for column in CONC_COLUMNS:
        assert conc[column].is_finite().all()
        assert ((conc[column] >= 0) & (conc[column] <= 1)).all()
    assert (conc.filter(pl.col("top_k") == 0.5)["top_k_share"]
            >= conc.filter(pl.col("top_k") == 0.1)["top_k_share"]).all()
    assert ((conc["top_k_channels"] - (conc["top_k"] * conc["channels"]).ceil()).abs() == 0).all()
    delta = _table(run_dir, "concentration_delta")
    assert delta.height == 4 * 2
    for column in CONC_COLUMNS:
        assert delta[f"delta_{column}"].is_finite().all()
    # the delta is trained minus random, row for row
    joined = conc.filter(pl.col("state") == "trained").join(
        conc.filter(pl.col("state") == "random"), on=["seed", "site", "top_k"], suffix="_r"
    ).join(delta, on=["seed", "site", "top_k"])
    assert ((joined["gini"] - joined["gini_r"] - joined["delta_gini"]).abs() < 1e-12).all()
    mass = _table(run_dir, "channel_mass")
    sums = mass.group_by(["state", "site"]).agg(pl.col("mass").sum())
    assert ((sums["mass"] - 1).abs() < 1e-9).all()
    for name in ("summary_concentration", "summary_concentration_delta"):
        assert _table(run_dir, name).height > 0
    for name in ("gini_by_depth", "norm_entropy_by_depth", "top_k_share_by_depth",
                 "delta_by_depth"):
        assert (run_dir / "figures" / f"{name}.png").is_file(), name


def test_concentration_of_zero_init_is_finite(run_cli, workdir):
    spec = _spec(workdir, "zero", "{kind: concentration, states: [random], top_k: [0.1, 0.5], "
                 "mass: raw}", weights="random\n  zero_init_last: true")
    spec.write_text(spec.read_text().replace('include: ["*.post_add"]', 'include: ["*"]'))
    run_dir = run_cli(spec, workdir / "zero")
    conc = _contract(run_dir, "concentration")
    for column in CONC_COLUMNS:
        assert not conc[column].is_nan().any() and conc[column].is_finite().all()
    pre = conc.filter(pl.col("site_kind") == "pre_add")
    assert pre.height == 4 * 2
    assert (pre["total_i_ty"] == 0).all()  # zero-init residual branches are constant
    assert (pre["gini"] == 0).all() and (pre["norm_entropy"] == 1).all()
    # corrected masses: a constant site holds no label MI beyond the null, so its
    # corrected concentration is missing rather than a confident number
    assert pre["gini_corrected"].is_null().all() and not pre["has_signal"].any()
    expected = (pre["top_k"] * pre["channels"] - 1e-9).ceil() / pre["channels"]
    assert ((pre["top_k_share"] - expected).abs() < 1e-12).all()
    post = conc.filter(pl.col("site_kind") == "post_add")
    assert (post["total_i_ty"] > 0).all()
    assert "concentration_delta" not in {p.stem for p in (run_dir / "tables").iterdir()}


def test_zero_mass_sites_are_skipped_by_knockouts(run_cli, workdir):
    spec = _spec(workdir, "zko", "{kind: knockout, state: random, q: [0.5], random_draws: 1, "
                 "variants: [plain]}", weights="random\n  zero_init_last: true")
    spec.write_text(spec.read_text().replace('include: ["*.post_add"]',
                                             'include: ["*.pre_add", "layer4.0.post_add"]'))
    run_dir = run_cli(spec, workdir / "zko")
    ko = _contract(run_dir, "knockout")
    assert set(ko["site"].unique()) == {LAST}  # pre_add sites hold no label MI: no rows
    assert ko["drop"].is_finite().all()


@pytest.mark.parametrize("experiment,where,message", [
    ("{kind: knockout, q: [0, 1.5]}", "experiment.q",
     r"MI-mass levels must lie in \(0, 1\], got \[0.0, 1.5\]"),
    ("{kind: semantic_knockout, q: [0.2, 2]}", "experiment.q",
     r"MI-mass levels must lie in \(0, 1\], got \[2.0\]"),
    ("{kind: perturb, alphas: [1.0, 0]}", "experiment.alphas.1", "greater than 0"),
    ("{kind: concentration, top_k: [0.1, 1.5]}", "experiment.top_k.1",
     "less than or equal to 1"),
    ("{kind: knockout, selections: [top, middle]}", "experiment.selections.1",
     "unknown value 'middle'; valid: top, random, bottom"),
])
def test_bad_experiment_fields_are_spec_errors(tmp_path, pm, capsys, experiment, where, message):
    import re

    from mi_probe.errors import SpecError
    from mi_probe._core.spec import load_spec

    path = _spec(tmp_path, "bad", experiment)
    line = path.read_text().splitlines().index(f"experiment: {experiment}") + 1
    with pytest.raises(SpecError, match=message):
        load_spec(path, pm=pm)
    assert cli.main(["validate", str(path)], pm=pm) == 2
    err = capsys.readouterr().err
    assert f"{path}:{line}: {where}:" in err and re.search(message, err), err


def test_cross_fitted_knockouts_select_on_one_half_and_score_on_the_other(planted, run_cli,
                                                                         workdir):
    spec = _spec(workdir, "xfit", "{kind: knockout, q: [1.0], random_draws: 1, "
                 "variants: [plain], fit: [in_sample, cross_fit]}", planted["path"])
    spec.write_text(spec.read_text().replace('include: ["*.post_add"]', f'include: ["{LAST}"]'))
    run_dir = run_cli(spec, workdir / "xfit")
    ko = _contract(run_dir, "knockout")
    assert set(ko["fit"].unique()) == {"in_sample", "cross_fit"}
    cross = ko.filter(pl.col("fit") == "cross_fit")
    assert sorted(cross["part"].unique()) == [0, 1]
    # each half is scored on its own baseline; the halves' baselines average to the whole
    whole = ko.filter(pl.col("fit") == "in_sample")["baseline_accuracy"][0]
    halves = cross.group_by("part").agg(pl.col("baseline_accuracy").first())
    assert halves["baseline_accuracy"].mean() == pytest.approx(whole, abs=0.05)
    # the planted channels are found on either half and still hurt on the other
    for part in (0, 1):
        rows = cross.filter(pl.col("part") == part)
        drop = {s: rows.filter(pl.col("selection") == s)["drop"].mean()
                for s in ("top", "random", "bottom")}
        assert drop["top"] - max(drop["random"], drop["bottom"]) >= 0.4, (part, drop)
    # every selection records its size as a share of the site and the top/bottom overlap
    n_site = planted["dead"].numel()
    assert ((ko["frac_channels"] - ko["n_channels"] / n_site).abs() < 1e-12).all()
    assert ((ko["top_bottom_overlap"] >= 0) & (ko["top_bottom_overlap"] <= 1)).all()
    summary = _table(run_dir, "summary_knockout")
    assert set(summary["fit"].unique()) == {"in_sample", "cross_fit"}
    assert (summary["n_seeds"] == 1).all()  # halves are averaged within the seed
    masses = _table(run_dir, "knockout_site_masses")
    assert masses.height == 3 and masses["has_signal"].all()


def test_semantic_summary_by_q_is_over_seeds_not_sites_and_classes(planted, run_cli, workdir):
    spec = _spec(workdir, "sem_q", "{kind: semantic_knockout, q: [0.5], random_draws: 1, "
                 "controls: [bottom]}", planted["path"])
    run_dir = run_cli(spec, workdir / "sem_q")
    sem = _table(run_dir, "semantic_knockout")
    assert sem["site"].n_unique() > 1 and sem["class"].n_unique() > 1
    by_q = _table(run_dir, "summary_semantic_knockout_by_q")
    # one seed: one observation per (q, selection), never sites x classes
    assert (by_q["n_seeds"] == 1).all()
    top = sem.filter(pl.col("selection") == "top")
    per_seed = top.group_by(["site", "class"]).agg(pl.col("drop").mean())["drop"].mean()
    row = by_q.filter(pl.col("selection") == "top")
    assert row["drop_mean"][0] == pytest.approx(per_seed, abs=1e-12)
    assert row["drop_ci_low"][0] is None  # one seed: no interval, whatever sites x classes


def test_a_run_where_no_site_beats_the_null_says_so_and_succeeds(run_cli, workdir):
    spec = _spec(workdir, "nosig", "{kind: knockout, state: random, q: [0.5], random_draws: 1, "
                 "variants: [plain]}", weights="random\n  zero_init_last: true")
    spec.write_text(spec.read_text().replace('include: ["*.post_add"]', 'include: ["*.pre_add"]'))
    run_dir = run_cli(spec, workdir / "nosig")
    tables = {p.stem for p in (run_dir / "tables").iterdir()}
    assert "knockout" not in tables  # nothing was intervened on
    masses = _table(run_dir, "knockout_site_masses")
    assert masses.height == 4 and not masses["has_signal"].any()
    assert (masses["total_mass"] == 0).all()
