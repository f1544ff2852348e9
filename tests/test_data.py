"""Tests of the data sources: shapes, labels, splits, determinism and every error path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from mi_probe._core import data
from mi_probe.builtin.datasets.digits import DigitsParams, DigitsSource
from mi_probe.builtin.datasets.imagefolder import ImageFolderParams, ImageFolderSource
from mi_probe.builtin.datasets.synthetic import SyntheticParams, SyntheticSource
from mi_probe.errors import DataError

MEAN = torch.tensor(data.IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(data.IMAGENET_STD).view(3, 1, 1)


def _save(path: Path, mode: str, size: tuple[int, int], value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    array = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if channels == 1 else array, mode=mode)
    image.save(path)


def make_folder(root: Path, classes=("a", "b", "c"), splits=("train", "val"), n: int = 2) -> Path:
    """``n`` RGB jpgs per class and split, except train/a/00.jpg (grayscale) and
    train/b/01.png (RGBA)."""
    for s, split in enumerate(splits):
        for c, name in enumerate(classes):
            for i in range(n):
                value = 100 * s + 10 * c + i
                if split == "train" and name == "a" and i == 0:
                    _save(root / split / name / f"{i:02d}.jpg", "L", (40, 30), value)
                elif split == "train" and name == "b" and i == 1:
                    _save(root / split / name / f"{i:02d}.png", "RGBA", (30, 40), value)
                else:
                    _save(root / split / name / f"{i:02d}.jpg", "RGB", (36, 28), value)
    return root


def folder_source(root: Path | str, **kw) -> ImageFolderSource:
    return ImageFolderSource(ImageFolderParams(root=str(root), image_size=16, **kw))


# ----------------------------------------------------------------------------- image folder

def test_imagefolder_shapes_labels_classes(tmp_path):
    bundle = folder_source(make_folder(tmp_path / "ds")).load()
    assert bundle.classes == ["a", "b", "c"]
    assert bundle.info["n_train"] == 6 and bundle.info["n_val"] == 6
    assert len(bundle.train) == 6 and len(bundle.val) == 6
    labels = [bundle.val[i][1] for i in range(len(bundle.val))]
    assert labels == [0, 0, 1, 1, 2, 2]
    for dataset in (bundle.train, bundle.val):
        for i in range(len(dataset)):
            x, y = dataset[i]
            assert x.shape == (3, 16, 16) and x.dtype == torch.float32
            assert isinstance(y, int)


def test_imagefolder_grayscale_and_rgba_become_rgb(tmp_path):
    source = folder_source(make_folder(tmp_path / "ds"), augment=False)
    bundle = source.load()
    gray, label = bundle.train[0]                      # train/a/00.jpg, mode L
    assert label == 0 and gray.shape == (3, 16, 16)
    raw = gray * STD + MEAN
    assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[1], raw[2], atol=1e-5)
    rgba, label = bundle.train[3]                      # train/b/01.png, mode RGBA
    assert label == 1 and rgba.shape == (3, 16, 16)
    assert str(source.scan()[1][3][0]).endswith("01.png")


def test_imagefolder_sixteen_bit_grayscale_is_rescaled(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(path)
    rgb = data.load_rgb(path)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (128, 128, 128)


def test_imagefolder_eval_deterministic_train_augmented(tmp_path):
    bundle = folder_source(make_folder(tmp_path / "ds")).load()
    assert torch.equal(bundle.val[2][0], bundle.val[2][0])
    torch.manual_seed(0)
    first, second = bundle.train[2][0], bundle.train[2][0]
    assert not torch.equal(first, second)
    plain = folder_source(tmp_path / "ds", augment=False).load()
    assert torch.equal(plain.train[2][0], plain.train[2][0])


def test_imagefolder_max_per_class_takes_first_sorted(tmp_path):
    source = folder_source(make_folder(tmp_path / "ds", n=3), max_per_class=2)
    bundle = source.load()
    assert len(bundle.train) == 6 and len(bundle.val) == 6
    _, train, _ = source.scan()
    assert [p.name for p, y in train if y == 2] == ["00.jpg", "01.jpg"]


def test_imagefolder_extensions_case_insensitive_and_other_files_ignored(tmp_path):
    root = make_folder(tmp_path / "ds")
    _save(root / "train" / "c" / "UPPER.JPG", "RGB", (20, 20), 7)
    (root / "train" / "c" / "notes.txt").write_text("not an image")
    (root / "train" / "c" / ".hidden.jpg").write_bytes(b"junk")
    _, train, _ = folder_source(root).scan()
    assert sorted(p.name for p, y in train if y == 2) == ["00.jpg", "01.jpg", "UPPER.JPG"]


def test_imagefolder_expands_home(tmp_path, monkeypatch):
    make_folder(tmp_path / "ds")
    monkeypatch.setenv("HOME", str(tmp_path))
    source = folder_source("~/ds")
    assert source.root == tmp_path / "ds"
    assert source.load().info["root"] == str(tmp_path / "ds")


def test_imagefolder_missing_root(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"data folder {missing} does not exist")
                       + ".*Imagenette2 layout root/train/<class>/, root/val/<class>/"):
        folder_source(missing).load()


def test_imagefolder_missing_split(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("train",))
    with pytest.raises(DataError, match=re.escape(f"split folder {root / 'val'} does not exist")
                       + r".*found subfolders \['train'\]"):
        folder_source(root).load()


def test_imagefolder_no_class_folders(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("val",))
    (root / "train").mkdir()
    (root / "train" / "loose.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match=re.escape(f"split folder {root / 'train'} has no class "
                                                  "folders") + ".*found 1 loose files"):
        folder_source(root).load()


def test_imagefolder_empty_classes_listed(tmp_path):
    root = make_folder(tmp_path / "ds")
    for name in ("b", "c"):
        for f in (root / "val" / name).iterdir():
            f.unlink()
    (root / "val" / "c" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match=re.escape(f"class folders without images in "
                                                  f"{root / 'val'}: b, c")):
        folder_source(root).load()


def test_imagefolder_mismatched_classes(tmp_path):
    root = make_folder(tmp_path / "ds", splits=("train",))
    make_folder(root, classes=("a", "b", "d"), splits=("val",))
    with pytest.raises(DataError, match=re.escape(
            f"class folders of {root / 'val'} differ from {root / 'train'}: "
            "missing in val: ['c']; only in val: ['d']")):
        folder_source(root).load()


def test_imagefolder_corrupt_file_named_on_access_and_by_verify(tmp_path):
    root = make_folder(tmp_path / "ds")
    bad = root / "train" / "a" / "x.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    source = folder_source(root)
    bundle = source.load()                               # structure is fine
    index = [str(p) for p, _ in source.scan()[1]].index(str(bad))
    with pytest.raises(DataError, match=re.escape(f"cannot read image {bad}")):
        bundle.train[index]
    assert source.verify() == [str(bad)]
    assert folder_source(make_folder(tmp_path / "clean")).verify() == []


def _names(dataset) -> set[Path]:
    return {path for path, _ in dataset.samples}


def test_imagefolder_selection_is_held_back_from_train_and_disjoint_from_eval(tmp_path):
    root = make_folder(tmp_path / "ds", n=6)
    everything = folder_source(root).load()
    bundle = folder_source(root, selection_fraction=0.34).load()
    train, held, val = _names(bundle.train), _names(bundle.selection), _names(bundle.val)
    # three roles, no image in two of them; train and selection partition the train folder
    assert not train & held and not held & val and not train & val
    assert train | held == _names(everything.train)
    assert val == _names(everything.val)
    # two of six per class, stratified, with labels kept
    assert sorted(label for _, label in bundle.selection.samples) == [0, 0, 1, 1, 2, 2]
    assert bundle.info["n_selection"] == 6 and bundle.info["n_train"] == 12
    assert bundle.selection_set is bundle.selection
    # the same files on every load (no seed, no listing order), eval transform (no crops)
    assert _names(folder_source(root, selection_fraction=0.34).load().selection) == held
    assert torch.equal(bundle.selection[0][0], bundle.selection[0][0])
    # without a fraction there is no third set: the evaluation images choose the model
    assert everything.selection is None and everything.selection_set is everything.val


def test_imagefolder_train_per_class_caps_training_only(tmp_path):
    root = make_folder(tmp_path / "ds", n=6)
    full = folder_source(root, selection_fraction=0.34).load()
    capped = folder_source(root, selection_fraction=0.34, train_per_class=1).load()
    assert sorted(label for _, label in capped.train.samples) == [0, 1, 2]
    assert _names(capped.train) <= _names(full.train)
    assert _names(capped.selection) == _names(full.selection)
    assert _names(capped.val) == _names(full.val)


def test_imagefolder_selection_needs_two_images_per_class(tmp_path):
    root = make_folder(tmp_path / "ds", n=1)
    with pytest.raises(DataError, match="needs at least 2 training images per class"):
        folder_source(root, selection_fraction=0.5).load()


def test_imagefolder_params_validation():
    with pytest.raises(ValidationError):
        ImageFolderParams(root="x", image_size=4)
    with pytest.raises(ValidationError):
        ImageFolderParams(root="x", crop_scale=(0.9, 0.5))
    with pytest.raises(ValidationError):
        ImageFolderParams(root="x", max_per_class=0)
    with pytest.raises(ValidationError):
        ImageFolderParams(root="x", colour="blue")
    assert ImageFolderParams(root="x", crop_scale=[0.5, 1.0]).crop_scale == (0.5, 1.0)


# ----------------------------------------------------------------------------- digits

@pytest.fixture(scope="module")
def digits():
    return DigitsSource(DigitsParams()).load()


def test_digits_split_sizes_and_stratification(digits):
    n_train, n_val = digits.info["n_train"], digits.info["n_val"]
    assert n_train + n_val == 1797 and abs(n_val - 1797 / 2) <= 1
    assert (len(digits.train), len(digits.val)) == (n_train, n_val)
    assert digits.info["source"] == "sklearn.datasets.load_digits"
    assert digits.classes == [str(i) for i in range(10)]
    train_y = np.bincount(digits.train.labels.numpy(), minlength=10)
    val_y = np.bincount(digits.val.labels.numpy(), minlength=10)
    assert (train_y > 0).all() and (val_y > 0).all()
    assert np.abs(train_y - val_y).max() <= 1          # stratified halves


def test_digits_images_and_normalisation(digits):
    x, y = digits.val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y <= 9
    val = torch.stack([digits.val[i][0] for i in range(len(digits.val))])
    raw = val * STD.unsqueeze(0) + MEAN.unsqueeze(0)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5)   # grayscale replicated
    assert val.min() < -2.0 and val.max() > 2.0               # normalised: spans ~[-2.1, 2.6]
    assert set(digits.val.labels.tolist()) == set(range(10))


def test_digits_split_deterministic_and_seeded(digits):
    again = DigitsSource(DigitsParams()).load()
    assert torch.equal(again.val.images, digits.val.images)
    assert torch.equal(again.val.labels, digits.val.labels)
    other = DigitsSource(DigitsParams(split_seed=1, augment=False)).load()
    assert not torch.equal(other.val.images, digits.val.images)


def test_digits_augmentation(digits):
    torch.manual_seed(0)
    assert not torch.equal(digits.train[0][0], digits.train[0][0])
    assert digits.train[0][0].shape == (3, 32, 32)
    plain = DigitsSource(DigitsParams(augment=False, image_size=8,
                                                val_fraction=0.25)).load()
    assert torch.equal(plain.train[0][0], plain.train[0][0])
    assert plain.train[0][0].shape == (3, 8, 8)
    assert abs(len(plain.val) - 0.25 * 1797) <= 1


def test_digits_params_reject_bad_values():
    with pytest.raises(ValidationError):
        DigitsParams(val_fraction=1.0)
    with pytest.raises(ValidationError):
        DigitsParams(hflip=True, extra_key=1)


# ----------------------------------------------------------------------------- synthetic

def synthetic(**kw) -> tuple[SyntheticSource, object]:
    source = SyntheticSource(SyntheticParams(**kw))
    return source, source.load()


def test_synthetic_deterministic_by_seed():
    _, a = synthetic(seed=3)
    _, b = synthetic(seed=3)
    _, c = synthetic(seed=4)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    _, d = synthetic(seed=3, n_train=10)
    assert torch.equal(a.val.images, d.val.images)      # val does not depend on n_train


def test_synthetic_shapes_and_balanced_labels():
    _, bundle = synthetic(n_classes=5, n_train=50, n_val=25, image_size=12)
    assert bundle.classes == [f"class_{i}" for i in range(5)]
    x, y = bundle.train[7]
    assert x.shape == (3, 12, 12) and x.dtype == torch.float32 and y == 2
    assert torch.bincount(bundle.train.labels).tolist() == [10] * 5
    assert torch.bincount(bundle.val.labels).tolist() == [5] * 5
    assert bundle.info == {"n_train": 50, "n_val": 25, "source": "synthetic"}


def test_synthetic_planted_structure():
    source, bundle = synthetic(noise=0.5, n_val=200)
    templates = source.templates().flatten(1)
    dist = torch.cdist(bundle.val.images.flatten(1), templates)
    accuracy = (dist.argmin(1) == bundle.val.labels).float().mean().item()
    assert accuracy >= 0.95
    source, clean = synthetic(noise=0.0)                # no normalisation applied
    assert torch.equal(clean.val.images[1], source.templates()[1])


def test_synthetic_augment_option():
    _, bundle = synthetic(augment=True, hflip=True)
    torch.manual_seed(0)
    assert not torch.equal(bundle.train[0][0], bundle.train[0][0])
    assert torch.equal(bundle.val[0][0], bundle.val[0][0])


def test_synthetic_params_reject_unknown_keys():
    with pytest.raises(ValidationError, match="bogus"):
        SyntheticParams(bogus=1)
    with pytest.raises(ValidationError):
        SyntheticParams(n_classes=1)
    with pytest.raises(ValidationError):
        SyntheticParams(noise=-0.1)
    assert SyntheticParams(kind="synthetic").kind == "synthetic"
    with pytest.raises(ValidationError):
        SyntheticParams(kind="digits")


# ----------------------------------------------------------------------------- loaders

def test_make_loader_reproducible_order():
    _, bundle = synthetic(n_train=40)

    def order(seed):
        loader = data.make_loader(bundle.train, batch_size=8, shuffle=True, seed=seed)
        return torch.cat([x.flatten(1)[:, 0] for x, _ in loader])

    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), order(2))
    plain = data.make_loader(bundle.val, batch_size=100, shuffle=False)
    x, y = next(iter(plain))
    assert torch.equal(x, bundle.val.images[:100]) and torch.equal(y, bundle.val.labels[:100])


def test_builtin_plugin_registers_all_sources():
    pytest.importorskip("mi_probe.hookspecs")
    from mi_probe.builtin.datasets import digits, imagefolder, synthetic

    seen = {}
    for module in (digits, imagefolder, synthetic):
        module.mi_probe_register_datasets(lambda name, factory, model: seen.update(
            {name: (factory, model)}))
    assert set(seen) == {"digits", "imagefolder", "synthetic"}
    for name, (factory, model) in seen.items():
        assert model.model_fields["kind"].default == name
        assert model.model_config["extra"] == "forbid"
        assert all(f.description for f in model.model_fields.values())
