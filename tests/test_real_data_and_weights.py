"""Real data and real weights the way users have them (issue 14, item 6), tested offline:
Imagenette2 through torchvision's loader on a local folder in its layout, and timm's
pretrained weights from a local file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mi_probe import cli
from mi_probe.errors import CheckpointError, DataError, SpecError
from mi_probe._core.models import build_model
from mi_probe._core.spec import load_spec_text

WNIDS = ["n01440764", "n02102040", "n02979186"]  # tench, English springer, cassette player


def imagenette_folder(root, per_class=(4, 3), size=40, folder="imagenette2-160"):
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for k, wnid in enumerate(WNIDS):
            target = root / folder / split / wnid
            target.mkdir(parents=True)
            for i in range(n):
                pixels = (rng.random((size, size + 8, 3)) * 60 + 60 * k).astype(np.uint8)
                Image.fromarray(pixels).save(target / f"{wnid}_{i}.JPEG")
    return root


def imagenette_source(pm, **params):
    entry = pm.registry.get("datasets", "imagenette")
    return entry.factory(entry.params_model(**params))


def test_imagenette_reads_torchvision_s_layout(pm, tmp_path):
    root = imagenette_folder(tmp_path / "data")
    bundle = imagenette_source(pm, root=str(root), image_size=32).load()
    assert bundle.classes == ["tench", "English springer", "cassette player"]
    assert len(bundle.train) == 12 and len(bundle.val) == 9
    image, label = bundle.val[0]
    assert image.shape == (3, 32, 32) and label == 0
    assert [bundle.val[i][1] for i in range(len(bundle.val))] == [0] * 3 + [1] * 3 + [2] * 3
    assert bundle.info["source"] == "imagenette"
    capped = imagenette_source(pm, root=str(root), image_size=32, max_per_class=2).load()
    assert len(capped.train) == 6 and len(capped.val) == 6


def test_a_missing_imagenette_says_how_to_get_it(pm, tmp_path):
    with pytest.raises(DataError, match=r"Imagenette2 \(320px\) is not in .*imagenette2-320"
                       r".*set data.download: true"):
        imagenette_source(pm, root=str(tmp_path), size="320px").load()


def test_validate_checks_where_imagenette_is_without_reading_it(pm, tmp_path):
    """``check_source`` (run by ``mi-probe validate``): a missing release is refused
    unless it will be downloaded; a data.root that is a file always."""
    with pytest.raises(DataError, match=r"Imagenette2 \(320px\) is not in .*imagenette2-320: "
                       r"expected the extracted folder .*set data.download: true"):
        imagenette_source(pm, root=str(tmp_path), size="320px").check_source()
    imagenette_source(pm, root=str(tmp_path / "later"), download=True).check_source()
    imagenette_source(pm, root=str(imagenette_folder(tmp_path / "data"))).check_source()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match=r"data.root: data folder .*a-file is a file"):
        imagenette_source(pm, root=str(tmp_path / "a-file"), download=True).check_source()


def test_imagenette_download_goes_through_torchvision(pm, tmp_path, monkeypatch):
    """download: true asks torchvision to fetch the archive; here the "download" writes
    the folder (no network in tests)."""
    from torchvision.datasets import Imagenette

    calls = []

    def fake_download(self):
        calls.append(self._url)
        imagenette_folder(tmp_path / "data")

    monkeypatch.setattr(Imagenette, "_download", fake_download)
    bundle = imagenette_source(pm, root=str(tmp_path / "data"), download=True,
                               image_size=16).load()
    assert calls == ["https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz"]
    assert len(bundle.val) == 9


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    """A local file standing in for timm's pretrained resnet18 weights (1000 classes)."""
    from safetensors.torch import save_file

    model = build_model("resnet18", 1000, seed=123)
    path = tmp_path_factory.mktemp("timm") / "resnet18_pretrained.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path, state


def test_pretrained_weights_load_from_a_local_file_with_a_new_head(timm_weights):
    path, state = timm_weights
    model = build_model("resnet18", 3, seed=0, pretrained="", pretrained_file=str(path))
    own = model.state_dict()
    assert torch.equal(own["layer3.1.conv2.weight"], state["layer3.1.conv2.weight"])
    assert own["fc.weight"].shape == (3, 512)  # the head is new, for the data's classes
    again = build_model("resnet18", 3, seed=0, pretrained="", pretrained_file=str(path))
    assert torch.equal(again.state_dict()["fc.weight"], own["fc.weight"])  # seeded


def test_pretrained_weights_of_another_architecture_are_refused(timm_weights):
    path, _ = timm_weights
    # timm itself loads it non-strictly once the head is replaced (layers would stay random)
    with pytest.raises(CheckpointError, match=r"resnet18_pretrained.safetensors does not hold "
                       r"resnet34 weights: 96 of the model's tensors are not in the file \(e.g. \['layer1.2."):
        build_model("resnet34", 3, seed=0, pretrained="", pretrained_file=str(path))
    with pytest.raises(CheckpointError, match=r"does not hold vgg11 weights: 20 of the "
                       r"model's tensors are not in the file .*122 tensors of the file are "
                       r"not in the model"):  # timm would have loaded nothing, silently
        build_model("vgg11", 3, seed=0, pretrained="", pretrained_file=str(path))


@pytest.mark.parametrize("weights,extra,message", [
    ("resnet50.a1_in1k", "", r"weights 'resnet50.a1_in1k' are a tag of 'resnet50', but "
     r"arch is 'resnet18'"),
    ("train", "  pretrained_file: w.safetensors\n", r"pretrained_file is only used with "
     r"weights: pretrained"),
    ("pretrained", "  pretrained_file: w.pth\n", r"expected a .safetensors file, got 'w.pth'"),
])
def test_pretrained_settings_are_validated(pm, weights, extra, message):
    text = ("name: p\ndata: {kind: synthetic}\nmodel:\n  arch: resnet18\n"
            f"  weights: {weights}\n{extra}experiment: {{kind: layer_mi}}\n")
    with pytest.raises(SpecError) as exc:
        load_spec_text(text, "p.yaml", pm=pm)
    assert __import__("re").search(message, "\n".join(exc.value.problems)), exc.value.problems


def test_a_pretrained_backbone_is_analysed_without_training(pm, tmp_path, capsys,
                                                            timm_weights, monkeypatch):
    """The README's second example: label MI of a pretrained backbone on Imagenette,
    nothing trained (here with local files)."""
    path, state = timm_weights
    root = imagenette_folder(tmp_path / "data", per_class=(2, 6))
    spec = tmp_path / "pretrained.yaml"
    spec.write_text(f"""\
name: pretrained_resnet18
seeds: [0]
data: {{kind: imagenette, root: {root}, size: 160px, image_size: 32}}
model:
  arch: resnet18
  weights: pretrained
  pretrained_file: {path}
sites: {{include: ["*.post_add"]}}
estimator: {{kind: histogram, bins: 4}}
experiment: {{kind: layer_mi, states: [trained]}}
report: {{formats: [html]}}
""")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["run", str(spec), "--out", str(tmp_path / "run"), "--cache-dir",
                     str(tmp_path / "cache"), "--no-progress"], pm=pm)
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "cache" / "models").exists()  # nothing was trained
    import json

    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["trained_models"]["0"]["weights"] == "pretrained"
    import polars as pl

    layer = pl.read_parquet(tmp_path / "run" / "tables" / "layer_mi.parquet")
    assert set(layer["state"]) == {"trained"} and layer.height == 8
