"""Your own ``nn.Module``: handed to ``mi_probe.run(model=...)`` or named in a spec as a
factory ``package.module:function``; sites from an adapter or from ``sites.modules``;
interventions on both; clear errors for every way of naming a model wrongly."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import mi_probe
from mi_probe._core.models import build_model, custom_fingerprint, register_python_model
from mi_probe._core.spec import load_spec_text
from mi_probe.builtin.datasets.synthetic import SyntheticParams, SyntheticSource
from mi_probe.errors import ModelError, SiteError, SpecError, UnknownModelError

ROOT = Path(__file__).resolve().parents[1]
K, SIZE = 4, 8
DATA = {"kind": "synthetic", "n_classes": K, "n_train": 64, "n_val": 200, "image_size": SIZE,
        "noise": 0.3, "seed": 0}


class TemplateNet(nn.Module):
    """A planted classifier: channel c < K of ``match`` correlates the image with class
    c's template (so channels 0..K-1 carry the label), channels K..2K-1 read noise
    directions that the head ignores."""

    def __init__(self, templates: torch.Tensor):
        super().__init__()
        self.match = nn.Conv2d(3, 2 * K, SIZE)
        self.act = nn.ReLU()
        self.head = nn.Linear(2 * K, K)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.match.weight[:K] = templates
            self.match.weight[K:] = 0.01 * torch.randn(K, 3, SIZE, SIZE, generator=gen)
            self.match.bias.fill_(100.0)  # every channel stays above the ReLU's kink
            self.head.weight.zero_()
            self.head.weight[:, :K] = torch.eye(K)
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.act(self.match(x)).flatten(1))


def planted_net() -> TemplateNet:
    templates = SyntheticSource(SyntheticParams(**DATA)).templates()
    return TemplateNet(templates).eval()


def spec(**changes) -> dict:
    base = {"name": "custom", "seeds": [0], "data": dict(DATA),
            "model": {"arch": "python:placeholder", "weights": "random"},
            "sites": {"modules": ["act"]},
            "estimator": {"kind": "histogram", "bins": 8},
            "experiment": {"kind": "knockout", "state": "random", "q": [0.5],
                           "selections": ["top", "random", "bottom"], "random_draws": 3},
            "report": {"formats": ["png"]}}
    for key, value in changes.items():
        base[key] = value
    return base


def quiet(**kw):
    return dict(progress=False, log=lambda line: None, **kw)


def test_a_handed_module_is_measured_and_knocked_out_end_to_end(tmp_path, pm):
    net = planted_net()
    result = mi_probe.run(spec(), out=tmp_path / "run", model=net,
                          cache_dir=tmp_path / "cache", plugins=[], **quiet())
    assert result.status == "complete"
    assert result.spec.model.arch.startswith("python:TemplateNet-")
    masses = result.table("knockout_site_masses")
    knock = result.table("knockout")
    assert set(knock["site"]) == {"act"}
    drops = {s: knock.filter(knock["selection"] == s)["drop"].mean()
             for s in ("top", "random", "bottom")}
    # the planted label channels are the top half: knocking them out leaves chance
    # accuracy (1/K); the noise channels (bottom half) cost nothing
    assert knock["baseline_accuracy"].min() > 0.95
    assert drops["top"] > 0.5
    assert drops["bottom"] == pytest.approx(0.0, abs=0.02)
    assert drops["bottom"] < drops["random"] < drops["top"]
    # the K template channels carry label MI above the null at the listed site
    assert masses["site"].to_list() == ["act"] and masses["signal_channels"].min() >= K


def test_a_handed_module_is_copied_not_changed_and_keyed_by_its_weights(tmp_path):
    net = planted_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    arch = register_python_model(net)
    built = build_model(arch, K, seed=3)
    assert built is not net
    for key, value in built.state_dict().items():
        assert torch.equal(value, before[key])
    with torch.no_grad():
        built.match.weight.zero_()
    assert torch.equal(net.match.weight, before["match.weight"])  # the caller's is intact
    other = planted_net()
    with torch.no_grad():
        other.head.bias[0] = 1.0
    assert register_python_model(other) != arch  # other weights: another name and cache key
    assert custom_fingerprint(register_python_model(other)) != custom_fingerprint(arch)


FACTORY_CODE = '''
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def small_cnn(num_classes=10):
    return SmallCNN(num_classes)


def not_a_model():
    return 42


def broken(num_classes):
    raise RuntimeError("no GPU here")
'''

FACTORY_SPEC = """\
name: factory
seeds: [0, 1]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: ARCH
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: SITES
estimator: {kind: histogram, bins: 8}
experiment: EXPERIMENT
report: {formats: [png]}
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    package = tmp_path / "code" / "my_nets"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FACTORY_CODE)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield "my_nets"
    sys.modules.pop("my_nets", None)


def factory_spec(tmp_path, arch="my_nets:small_cnn",
                 sites="{modules: [features.1, features.4]}",
                 experiment="{kind: layer_mi}"):
    path = tmp_path / "factory.yaml"
    path.write_text(FACTORY_SPEC.replace("ARCH", arch).replace("SITES", sites)
                    .replace("EXPERIMENT", experiment))
    return path


def test_a_spec_names_a_factory_in_the_users_code(tmp_path, run_cli, user_code):
    code, out, err = run_cli(factory_spec(tmp_path), "--out", tmp_path / "run")
    assert code == 0, err
    run = mi_probe.load_run(tmp_path / "run")
    table = run.table("layer_mi")
    assert set(table["site"]) == {"features.1", "features.4"}
    assert set(table["state"]) == {"trained", "random"}
    assert set(table["seed"]) == {0, 1}
    # the factory is called under each seed: two seeds, two initialisations
    one, two = (build_model("my_nets:small_cnn", 3, seed) for seed in (0, 1))
    assert not torch.equal(one.features[0].weight, two.features[0].weight)
    assert torch.equal(one.features[0].weight,
                       build_model("my_nets:small_cnn", 3, 0).features[0].weight)


def test_interventions_run_on_a_factory_model_with_adapter_sites(tmp_path, run_cli, user_code):
    """No sites listed: an adapter claims the model (here the generic fallback: its
    top-level children); a knockout runs at the site it gives."""
    path = factory_spec(tmp_path, sites="{adapter: auto}", experiment=(
        "{kind: knockout, q: [0.5], selections: [top, random], random_draws: 2}"))
    code, out, err = run_cli(path, "--out", tmp_path / "run")
    assert code == 0, err
    knock = mi_probe.load_run(tmp_path / "run").table("knockout")
    assert set(knock["site"]) == {"features"}
    assert set(knock["selection"]) == {"top", "random"}
    assert knock["accuracy"].is_between(0.0, 1.0).all()


def test_the_code_of_a_factory_is_part_of_the_model_cache_key(tmp_path, user_code):
    first = custom_fingerprint("my_nets:small_cnn")
    source = tmp_path / "code" / "my_nets" / "__init__.py"
    source.write_text(FACTORY_CODE.replace("nn.Conv2d(8, 16", "nn.Conv2d(8, 24")
                      .replace("nn.Linear(16", "nn.Linear(24"))
    import importlib

    importlib.reload(sys.modules["my_nets"])
    assert custom_fingerprint("my_nets:small_cnn") != first


@pytest.mark.parametrize("arch, error, message", [
    ("no_such_package_xyz:f", UnknownModelError, "cannot import 'no_such_package_xyz'"),
    ("my_nets:nope", UnknownModelError, "has no 'nope'"),
    ("my_nets:not_a_model", ModelError, "returned a int, not a torch nn.Module"),
    ("my_nets:broken", ModelError, "the factory raised RuntimeError: no GPU here"),
    ("python:Gone-12345678", UnknownModelError, "handed to mi_probe.run.*another Python"),
])
def test_a_wrongly_named_model_is_a_clear_error(arch, error, message, user_code):
    with pytest.raises(error, match=message):
        build_model(arch, 3, 0)


def test_validate_names_what_is_wrong_with_a_custom_model(tmp_path, user_code, pm, capsys):
    from mi_probe import cli

    assert cli.main(["validate", str(factory_spec(tmp_path))], pm=pm) == 0
    bad_site = factory_spec(tmp_path, sites="{modules: [features.1, feature.4]}")
    assert cli.main(["validate", str(bad_site)], pm=pm) != 0
    err = capsys.readouterr().err
    assert "has no module 'feature.4'" in err and "did you mean 'features.4'" in err
    bad_arch = factory_spec(tmp_path, arch="my_nets:nope")
    assert cli.main(["validate", str(bad_arch)], pm=pm) != 0
    assert "module 'my_nets' has no 'nope'" in capsys.readouterr().err


def test_listed_modules_and_an_adapter_name_are_refused_together(tmp_path, pm):
    from mi_probe._core.sites.listed import spec_adapter

    loaded = load_spec_text(textwrap.dedent(FACTORY_SPEC).replace("ARCH", "my_nets:f")
                            .replace("SITES", "{modules: [a], adapter: generic}")
                            .replace("EXPERIMENT", "{kind: layer_mi}"), "<t>", pm=pm)
    with pytest.raises(SiteError, match="both choose the sites"):
        spec_adapter(pm, nn.Linear(2, 2), loaded.sites, "my_nets:f")
    listed = load_spec_text(textwrap.dedent(FACTORY_SPEC).replace("ARCH", "my_nets:f")
                            .replace("SITES", "{modules: [x, x]}")
                            .replace("EXPERIMENT", "{kind: layer_mi}"), "<t>", pm=pm)
    with pytest.raises(SiteError, match=r"lists \['x'\] more than once"):
        spec_adapter(pm, nn.Linear(2, 2), listed.sites, "my_nets:f").site_refs(
            nn.Sequential(nn.Linear(2, 2)))


def test_timm_pretrained_weights_are_refused_for_your_own_model(pm):
    text = FACTORY_SPEC.replace("ARCH", "my_nets:small_cnn").replace(
        "weights: train", "weights: pretrained").replace("SITES", "{}").replace(
        "EXPERIMENT", "{kind: layer_mi}")
    with pytest.raises(SpecError, match="is your own model, and timm's pretrained weights"):
        load_spec_text(text, "<t>", pm=pm)


def test_model_must_be_a_module_or_a_factory():
    with pytest.raises(ModelError, match="expected a torch nn.Module or a function"):
        register_python_model(42)


def test_a_head_for_another_class_count_is_refused_before_any_work(tmp_path):
    three = dict(DATA, n_classes=3)
    with pytest.raises(SpecError, match=r"returns \(2, 4\) logits .* the data has 3 classes"):
        mi_probe.run(spec(data=three), out=tmp_path / "run", model=planted_net(),
                     cache_dir=tmp_path / "cache", **quiet())


DOCS = ROOT / "docs"


def test_the_worked_example_is_in_the_doc_verbatim_and_runs(tmp_path, run_cli, monkeypatch):
    doc = (DOCS / "custom_models.md").read_text()
    for name in ("custom_cnn.py", "custom_cnn.yaml"):
        assert (DOCS / "examples" / name).read_text() in doc, f"{name} not in the doc verbatim"
    monkeypatch.syspath_prepend(str(DOCS / "examples"))
    try:
        code, out, err = run_cli(DOCS / "examples" / "custom_cnn.yaml", "--out", tmp_path / "r",
                                 "--set", "seeds=[0]", "--set", "model.train.epochs=1")
        assert code == 0, err
        run = mi_probe.load_run(tmp_path / "r")
        assert run.spec.model.arch == "custom_cnn:small_cnn"
        assert run.table("layer_mi")["site"].unique().sort().to_list() == [
            "features.10", "features.2", "features.6"]
    finally:
        sys.modules.pop("custom_cnn", None)
