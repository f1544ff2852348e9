"""The activation store (mi_probe/_core/store, docs/store.md): bit-exact round trips on a
folder and on fsspec URLs, atomic and concurrent writes, keys that never let a changed
model, data set, transform, site or reduction read as a match, reuse across engines and
runs without running the network, ``mi-probe cache`` and a store shared by Ray workers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("zarr", minversion="3")

from mi_probe._core import capture as capture_mod  # noqa: E402
from mi_probe._core.data import ImageFileDataset, TensorImageDataset, UpsampledGrayDataset  # noqa: E402
from mi_probe._core.runner.context import Engine  # noqa: E402
from mi_probe._core.spec import load_spec  # noqa: E402
from mi_probe._core.store import (OUTPUTS, STORE_ENV, ActivationStore, StoreKey,  # noqa: E402
                                  cache_main, data_fingerprint, model_fingerprint,
                                  resolve_store, site_definition, site_reduction)
from mi_probe._core.store import zarrstore  # noqa: E402
from mi_probe.interfaces import Site  # noqa: E402

KEY = StoreKey(model="m" * 32, data="d" * 32, preprocessing="p", site="layer1.0.post_add",
               site_def="s" * 16, reduction="mean", runtime="torch x; cpu; batch 8")

SPEC = """\
name: store_tiny
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 16, n_val: 40, image_size: 16, noise: 0.5}
model: {arch: test_resnet, weights: random}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
eval: {batch_size: 16}
experiment: {kind: layer_mi, states: [random]}
report: {formats: [png]}
"""


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch):
    monkeypatch.delenv(STORE_ENV, raising=False)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """Tiny models on one torch thread (the machine is shared)."""


def _arrays(n: int = 257, c: int = 13, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, c, generator=gen)
    acts[0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-42])  # NaN, Inf, -0, denormal
    return {"acts": acts, "labels": torch.arange(n) % 5}


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(params=["path", "file-url", "memory-url"])
def location(request, tmp_path):
    if request.param == "path":
        yield str(tmp_path / "store")
        return
    if request.param == "file-url":
        yield (tmp_path / "store").as_uri()  # file:///...
        return
    name = f"memory://mi-probe-test-{os.getpid()}-{time.monotonic_ns()}"
    yield name
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists(name):
        fs.rm(name, recursive=True)


# ----------------------------------------------------------------------------- the store

def test_read_returns_what_was_written_bit_for_bit(location):
    store = ActivationStore(location, chunk_bytes=13 * 4 * 32)  # 32 rows a chunk: 9 chunks
    arrays = _arrays()
    assert store.read(KEY) is None and not store.contains(KEY)
    assert store.write(KEY, arrays, info={"seed": 0})
    out = store.read(KEY)
    assert out is not None and set(out) == {"acts", "labels"}
    assert out["acts"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    assert _bits(out["acts"]) == _bits(arrays["acts"])
    assert torch.equal(out["labels"], arrays["labels"])
    assert not store.write(KEY, _arrays(seed=1))  # already stored: nothing is written
    assert _bits(store.read(KEY)["acts"]) == _bits(arrays["acts"])
    other = dataclasses.replace(KEY, model="n" * 32)
    assert store.read(other) is None
    (entry,) = store.entries()
    assert entry.key == KEY.fields() and entry.digest == KEY.digest
    assert entry.arrays["acts"]["shape"] == [257, 13] and entry.nbytes > 0
    assert entry.info == {"seed": 0}


def test_rows_appended_batch_by_batch_equal_the_whole_array(tmp_path):
    store = ActivationStore(tmp_path / "s", chunk_bytes=13 * 4 * 32)
    arrays = _arrays()
    with store.writer(KEY, rows_hint=100) as writer:  # a wrong hint: the array grows
        for start in range(0, 257, 19):  # batches that do not align with chunks
            writer.append("acts", arrays["acts"][start:start + 19])
            writer.append("labels", arrays["labels"][start:start + 19])
    out = store.read(KEY)
    assert _bits(out["acts"]) == _bits(arrays["acts"])
    assert torch.equal(out["labels"], arrays["labels"])


def test_a_capture_fed_batch_by_batch_stores_every_site_once(location):
    """What capture hands the store per batch (docs/store.md, "Writing as captured")."""
    store = ActivationStore(location, chunk_bytes=4 * 7 * 16)
    keys = {OUTPUTS: dataclasses.replace(KEY, site=OUTPUTS, site_def="", reduction=""),
            "a": dataclasses.replace(KEY, site="a"), "b": dataclasses.replace(KEY, site="b")}
    gen = torch.Generator().manual_seed(3)
    acts = {"a": torch.randn(50, 7, generator=gen), "b": torch.randn(50, 3, generator=gen)}
    labels, logits = torch.arange(50) % 4, torch.randn(50, 4, generator=gen)
    store.write(keys["b"], {"acts": acts["b"]})  # stored before: not written again
    writer = store.capture_writer(keys, OUTPUTS, {"seed": 0}, rows_hint=50)
    assert set(writer.writers) == {OUTPUTS, "a"}
    for start in range(0, 50, 16):
        batch = slice(start, start + 16)
        for name in acts:
            writer.append(name, acts[name][batch])
        writer.append_outputs(labels[batch], logits[batch])
    assert not store.contains(keys["a"])  # published only on commit
    writer.commit()
    found = store.read_many([keys[OUTPUTS], keys["a"], keys["b"]])
    assert found is not None
    assert _bits(found[1]["acts"]) == _bits(acts["a"]) and _bits(found[2]["acts"]) == _bits(acts["b"])
    assert torch.equal(found[0]["labels"], labels) and _bits(found[0]["logits"]) == _bits(logits)
    assert store.read_many([keys["a"], dataclasses.replace(KEY, site="c")]) is None


def test_a_failed_write_during_a_capture_is_dropped_not_raised(tmp_path, monkeypatch):
    messages: list[str] = []
    store = ActivationStore(tmp_path / "s", chunk_bytes=4 * 7 * 16, log=messages.append)
    keys = {OUTPUTS: dataclasses.replace(KEY, site=OUTPUTS), "a": KEY}
    writer = store.capture_writer(keys, OUTPUTS, rows_hint=64)

    async def full(self, group, block):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zarrstore._ArrayWriter, "write", full)
    for start in range(0, 64, 16):  # the first whole chunk fails; later batches are skipped
        writer.append("a", torch.zeros(16, 7))
        writer.append_outputs(torch.zeros(16, dtype=torch.long), None)
    assert writer.failed and writer.commit() is False
    assert len(messages) == 1 and "No space left on device" in messages[0]
    assert store.entries() == [] and store.unpublished() == []


def test_an_interrupted_write_is_never_read_and_is_redone(tmp_path):
    store = ActivationStore(tmp_path / "s", chunk_bytes=13 * 4 * 32)
    arrays = _arrays()
    with pytest.raises(RuntimeError, match="mid-write"):
        with store.writer(KEY) as writer:
            writer.append("acts", arrays["acts"][:100])
            raise RuntimeError("killed mid-write")
    assert store.read(KEY) is None and store.unpublished() == []  # aborted: nothing left
    # a process killed mid-write leaves its folder without a marker
    killed = store.writer(KEY)
    killed.append("acts", arrays["acts"][:200])  # 6 chunks written, never committed
    assert store.read(KEY) is None and not store.contains(KEY) and store.entries() == []
    assert len(store.unpublished()) == 1
    assert store.write(KEY, arrays)  # redone by the next writer
    assert _bits(store.read(KEY)["acts"]) == _bits(arrays["acts"])
    store.prune(older_than_s=1e9)  # a young unfinished write may still be running: kept
    assert len(store.unpublished()) == 1
    store.prune(older_than_s=1e9, now=time.time() + 2 * zarrstore.ORPHAN_AGE_S)
    assert store.unpublished() == [] and len(store.entries()) == 1


def test_a_damaged_entry_is_a_miss_not_wrong_numbers(tmp_path, capsys):
    messages: list[str] = []
    store = ActivationStore(tmp_path / "s", chunk_bytes=13 * 4 * 32, log=messages.append)
    store.write(KEY, _arrays())
    chunks = sorted(p for p in (tmp_path / "s").rglob("c/*/*") if p.is_file())
    chunks[1].unlink()  # a chunk lost (a prune racing a read, a flaky disk)
    assert store.read(KEY) is None
    assert "unreadable" in messages[0] and KEY.digest in messages[0]
    marker = tmp_path / "s" / "entries" / KEY.digest / "ready.json"
    marker.write_text(marker.read_text()[:40])  # a marker cut short
    assert store.read(KEY) is None and not store.contains(KEY)


def test_two_writers_of_one_key_publish_one_entry(tmp_path):
    store = ActivationStore(tmp_path / "s")
    first, second = _arrays(seed=1), _arrays(seed=2)
    w1, w2 = store.writer(KEY), store.writer(KEY)
    w1.append("acts", first["acts"])
    w2.append("acts", second["acts"])
    assert w2.commit() is True
    assert w1.commit() is False  # lost the race: its folder is deleted, nothing is mixed
    assert _bits(store.read(KEY)["acts"]) == _bits(second["acts"])
    assert store.unpublished() == []
    assert [p.name for p in (tmp_path / "s" / "entries" / KEY.digest).iterdir()
            if p.is_dir()] == [w2.name]


WRITER = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from mi_probe._core.store import ActivationStore, StoreKey
location, seed, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
key = StoreKey(**{KEY})
gen = torch.Generator().manual_seed(seed)
store = ActivationStore(location, chunk_bytes=13 * 4 * 16)
while not go.exists():  # both processes start writing at once
    time.sleep(0.01)
print(store.write(key, {{"acts": torch.randn(2000, 13, generator=gen)}}))
"""


def test_two_processes_writing_one_key_do_not_corrupt_it(tmp_path):
    import subprocess
    import sys

    location, go = str(tmp_path / "s"), tmp_path / "go"
    code = WRITER.format(KEY=KEY.fields())
    procs = [subprocess.Popen([sys.executable, "-c", code, location, str(seed), str(go)],
                              stdout=subprocess.PIPE, text=True) for seed in (1, 2)]
    time.sleep(0.5)
    go.write_text("")
    won = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(won) == ["False", "True"], won
    winner = 1 if won[0] == "True" else 2
    expected = torch.randn(2000, 13, generator=torch.Generator().manual_seed(winner))
    store = ActivationStore(location)
    assert _bits(store.read(KEY)["acts"]) == _bits(expected)
    assert len(store.entries()) == 1 and store.unpublished() == []


# ----------------------------------------------------------------------------- keys

def _files(root: Path, n: int = 4) -> list[tuple[Path, int]]:
    from PIL import Image

    samples = []
    for i in range(n):
        path = root / f"{i}.png"
        Image.fromarray(np.full((6, 6, 3), 40 * i, dtype=np.uint8)).save(path)
        samples.append((path, i % 2))
    return samples


def _eval_transform(size: int):
    from mi_probe.builtin.datasets.imagefolder import ImageFolderParams, ImageFolderSource

    return ImageFolderSource(ImageFolderParams(root="unused", image_size=size)).eval_transform()


def test_the_data_fingerprint_changes_with_files_order_subset_and_transform(tmp_path):
    samples = _files(tmp_path)
    base = data_fingerprint(ImageFileDataset(samples, _eval_transform(16)))
    assert base[0] is not None and "CenterCrop" in base[1]
    assert data_fingerprint(ImageFileDataset(list(samples), _eval_transform(16))) == base
    reordered = data_fingerprint(ImageFileDataset(samples[::-1], _eval_transform(16)))
    relabelled = data_fingerprint(ImageFileDataset([(p, 1 - y) for p, y in samples],
                                                   _eval_transform(16)))
    resized = data_fingerprint(ImageFileDataset(samples, _eval_transform(24)))
    subset = data_fingerprint(torch.utils.data.Subset(
        ImageFileDataset(samples, _eval_transform(16)), [0, 2]))
    permuted = data_fingerprint(torch.utils.data.Subset(
        ImageFileDataset(samples, _eval_transform(16)), [1, 0, 2, 3]))
    from PIL import Image

    Image.fromarray(np.full((6, 6, 3), 7, dtype=np.uint8)).save(samples[2][0])  # one file
    os.utime(samples[2][0], ns=(1, 1))  # whatever the clock did
    rewritten = data_fingerprint(ImageFileDataset(samples, _eval_transform(16)))
    digests = [base[0], reordered[0], relabelled[0], subset[0], permuted[0], rewritten[0]]
    assert len(set(digests)) == len(digests)
    assert resized[1] != base[1]  # the transform is the preprocessing field


def test_the_data_fingerprint_of_tensors_and_unknown_datasets():
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6) % 2
    base = data_fingerprint(TensorImageDataset(images, labels))
    changed = images.clone()
    changed[3, 1, 2, 2] += 1e-6
    assert data_fingerprint(TensorImageDataset(changed, labels))[0] != base[0]
    gray = torch.rand(6, 8, 8)
    up16 = data_fingerprint(UpsampledGrayDataset(gray, labels, 16))
    up24 = data_fingerprint(UpsampledGrayDataset(gray, labels, 24))
    assert up16[0] == up24[0] and up16[1] != up24[1] and "16x16" in up16[1]
    unnamed = data_fingerprint(TensorImageDataset(images, labels, transform=lambda x: x * 2))
    assert unnamed[0] is None and "no stable description" in unnamed[1]

    class Plain(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return images[i], 0

    assert data_fingerprint(Plain())[0] is None

    class Named(Plain):
        def fingerprint(self):
            return "v1"

    assert data_fingerprint(Named())[0] is not None


def test_the_model_fingerprint_changes_with_one_weight_a_buffer_or_an_activation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    base = model_fingerprint(model)
    assert base == model_fingerprint(model)
    with torch.no_grad():
        model[0].weight[1, 2, 0, 0] += 1e-7
    weight = model_fingerprint(model)
    model[1].running_mean[0] = 0.5
    buffer = model_fingerprint(model)
    model[2] = nn.Tanh()  # no parameters, another function
    act = model_fingerprint(model)
    assert len({base, weight, buffer, act}) == 4
    handle = model[0].register_forward_hook(lambda m, i, o: o * 2)
    assert model_fingerprint(model) is None  # a hooked model is never keyed
    handle.remove()
    assert model_fingerprint(model) == act


def test_the_site_key_covers_every_site_field_and_the_reduction():
    site = Site(name="blocks.0", module="blocks.0", kind="block", channels=8, depth=0,
                layout="nlc", prefix_tokens=1)
    assert site_definition(site) == site_definition(dataclasses.replace(site))
    assert site_definition(dataclasses.replace(site, tokens="cls")) != site_definition(site)
    assert site_definition(dataclasses.replace(site, index=1)) != site_definition(site)
    assert site_reduction(site) == "mean"

    @dataclasses.dataclass(frozen=True)
    class Reduced(Site):
        reduction: str = "none"

    reduced = Reduced(**dataclasses.asdict(site))
    assert site_reduction(reduced) == "none"
    assert site_definition(reduced) != site_definition(site)
    assert KEY.digest != dataclasses.replace(KEY, reduction="none").digest


# ----------------------------------------------------------------------------- in a run

@pytest.fixture
def captures(monkeypatch):
    """Names of the plain captures ``Engine.capture`` runs (each a pass of the network)."""
    calls: list[str] = []
    real = capture_mod.capture

    def spy(*args, **kwargs):
        if kwargs.get("desc", "capture") != "capture":
            calls.append(kwargs["desc"])
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_mod, "capture", spy)
    return calls


@pytest.fixture
def engine(pm, tmp_path):
    """``make(extra_yaml="", store=...)``: an Engine on SPEC (plus YAML lines)."""
    counter = iter(range(1000))

    def make(extra: str = "", store=True, text: str = SPEC):
        path = tmp_path / f"spec{next(counter)}.yaml"
        path.write_text(text + textwrap.dedent(extra))
        return Engine(load_spec(path, pm=pm), pm, cache_dir=tmp_path / "cache",
                      log=lambda m: None, progress=False, store=store)

    return make


def _same(a, b) -> bool:
    return (set(a.acts) == set(b.acts) and all(_bits(a.acts[k]) == _bits(b.acts[k])
                                               for k in a.acts)
            and torch.equal(a.labels, b.labels) and _bits(a.logits) == _bits(b.logits)
            and [s.name for s in a.sites] == [s.name for s in b.sites])


def test_another_engine_reads_the_store_without_running_the_network(engine, captures,
                                                                     tmp_path):
    first = engine().capture(0, "random")
    assert captures == ["random seed 0"]
    assert (tmp_path / "cache" / "activations" / "entries").is_dir()  # the default place
    again = engine().capture(0, "random")
    assert captures == ["random seed 0"]  # read, not captured
    assert _same(first, again)

    eng = engine()
    with torch.no_grad():  # one weight of the model changes
        next(eng.model(0, "random").parameters()).view(-1)[0] += 1e-3
    eng.capture(0, "random")
    assert captures == ["random seed 0"] * 2
    engine().capture(1, "random")  # another seed: other weights
    assert len(captures) == 3


@pytest.mark.parametrize("change", [
    "data: {kind: synthetic, n_classes: 3, n_train: 16, n_val: 40, image_size: 16, noise: 0.6}",
    "data: {kind: synthetic, n_classes: 3, n_train: 16, n_val: 40, image_size: 20, noise: 0.5}",
    "eval: {batch_size: 16, max_samples: 30}",
    "sites: {include: ['*.post_add', 'layer4.0.pre_add']}",
    "eval: {batch_size: 8}",
])
def test_a_changed_data_set_transform_subset_site_list_or_batch_is_a_miss(
        engine, captures, change):
    engine().capture(0, "random")
    section = change.split(":")[0]
    text = "\n".join(line for line in SPEC.splitlines() if not line.startswith(section + ":"))
    changed = engine(change + "\n", text=text + "\n")
    changed.capture(0, "random")
    assert len(captures) == 2
    engine(change + "\n", text=text + "\n").capture(0, "random")  # and now it is stored
    assert len(captures) == 2


def test_fewer_sites_than_stored_is_a_hit_and_a_changed_reduction_a_miss(
        engine, captures, monkeypatch):
    full = engine().capture(0, "random")
    text = SPEC.replace('sites: {include: ["*.post_add"]}', 'sites: {include: ["layer2.0.post_add"]}')
    part = engine(text=text).capture(0, "random")
    assert len(captures) == 1 and list(part.acts) == ["layer2.0.post_add"]
    assert _bits(part.acts["layer2.0.post_add"]) == _bits(full.acts["layer2.0.post_add"])
    from mi_probe._core.runner import context

    monkeypatch.setattr(context, "site_reduction", lambda site, default="mean": "max")
    engine().capture(0, "random")
    assert len(captures) == 2


def test_unpooled_and_projected_sites_are_stored_under_their_own_reduction(
        engine, captures, pm):
    """``sites.reduce`` enters the key: mean, none and a projection never read as each
    other, and each is read back bit for bit."""
    from mi_probe._core.spec import SiteReduceSpec

    def make(reduce):
        eng = engine()
        eng.spec.sites.reduce = reduce  # what a spec's sites.reduce sets
        return eng

    pooled = make("mean").capture(0, "random")
    flat = make("none").capture(0, "random")
    projected = make(SiteReduceSpec(project=8, dtype="float16")).capture(0, "random")
    assert len(captures) == 3
    site = "layer2.0.post_add"
    assert flat.acts[site].shape[1] > pooled.acts[site].shape[1]
    assert projected.acts[site].shape[1] == 8 and projected.acts[site].dtype == torch.float16
    assert _same(flat, make("none").capture(0, "random"))
    assert _same(projected, make(SiteReduceSpec(project=8, dtype="float16", max_mb=64))
                 .capture(0, "random"))  # another memory budget: the same values
    make(SiteReduceSpec(project=8, seed=1, dtype="float16")).capture(0, "random")
    assert len(captures) == 4


def _image_folder(root: Path, value: int = 0) -> None:
    from PIL import Image

    gen = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", 4)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = gen.integers(0, 255, (12, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_a_changed_image_file_or_image_size_is_a_miss(engine, captures, tmp_path):
    from PIL import Image

    _image_folder(tmp_path / "images")
    spec = SPEC.replace(
        "data: {kind: synthetic, n_classes: 3, n_train: 16, n_val: 40, image_size: 16, "
        "noise: 0.5}", f"data: {{kind: imagefolder, root: '{tmp_path / 'images'}', "
        "image_size: 16, augment: false}")
    first = engine(text=spec).capture(0, "random")
    assert _same(first, engine(text=spec).capture(0, "random")) and len(captures) == 1
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(
        tmp_path / "images" / "val" / "b" / "2.png")  # one evaluation file changes
    changed = engine(text=spec).capture(0, "random")
    assert len(captures) == 2 and not _same(first, changed)
    engine(text=spec.replace("image_size: 16", "image_size: 20")).capture(0, "random")
    assert len(captures) == 3


def test_the_store_can_be_turned_off_or_moved(engine, captures, tmp_path, monkeypatch):
    off = engine(store=False)
    assert off.store is None
    off.capture(0, "random")
    engine(store=False).capture(0, "random")
    assert len(captures) == 2
    monkeypatch.setenv(STORE_ENV, "off")
    assert engine().store is None
    url = (tmp_path / "moved").as_uri()
    monkeypatch.setenv(STORE_ENV, url)
    moved = engine()
    assert moved.store.location == url and "moved" in moved.store_note
    moved.capture(0, "random")
    engine().capture(0, "random")
    assert len(captures) == 3
    assert (tmp_path / "moved" / "entries").is_dir()
    assert not (tmp_path / "cache" / "activations").exists()
    monkeypatch.setenv(STORE_ENV, "on")
    store, _ = resolve_store(tmp_path / "cache")
    assert store.location == str(tmp_path / "cache" / "activations")
    monkeypatch.delenv(STORE_ENV)
    assert resolve_store(tmp_path, enabled=False)[0] is None


def test_a_failed_write_does_not_stop_the_run_and_is_redone(engine, captures, tmp_path,
                                                            monkeypatch):
    messages: list[str] = []
    store = ActivationStore(tmp_path / "s", chunk_bytes=192 * 4 * 8, log=messages.append)
    real = zarrstore._ArrayWriter.write
    writes = []

    async def failing(self, group, block):
        writes.append(1)
        if len(writes) == 2:
            raise OSError(28, "No space left on device")
        return await real(self, group, block)

    monkeypatch.setattr(zarrstore._ArrayWriter, "write", failing)
    eng = engine(store=store)
    eng.log = messages.append
    first = eng.capture(0, "random")
    assert any("could not write" in m and "No space left" in m for m in messages)
    assert store.unpublished() == []  # the failed entry's folder is gone
    assert not all(store.contains(k) for k in eng._store_keys(eng.model(0, "random"),
                                                              eng.sites(eng.model(0, "random"))).values())
    second = engine(store=store).capture(0, "random")  # a miss: captured and written
    assert len(captures) == 2 and _same(first, second)
    third = engine(store=store).capture(0, "random")
    assert len(captures) == 2 and _same(first, third)


def test_a_capture_writes_its_rows_per_batch_as_they_are_captured(engine, captures,
                                                                   tmp_path, monkeypatch):
    """Engine.capture hands the store each batch's rows during the capture (40 samples
    in batches of 16: three appends per site and for the outputs), publishing only
    after the capture is checked."""
    store = ActivationStore(tmp_path / "s", chunk_bytes=4 * 16 * 8)
    seen: list[tuple[str, int, bool]] = []
    real_append = zarrstore.CaptureWriter.append
    real_outputs = zarrstore.CaptureWriter.append_outputs

    def append(self, site, rows):
        seen.append((site, len(rows), bool(store.entries())))
        return real_append(self, site, rows)

    def append_outputs(self, labels, logits):
        seen.append((OUTPUTS, len(labels), logits is not None))
        return real_outputs(self, labels, logits)

    monkeypatch.setattr(zarrstore.CaptureWriter, "append", append)
    monkeypatch.setattr(zarrstore.CaptureWriter, "append_outputs", append_outputs)
    eng = engine(store=store)
    cap = eng.capture(0, "random")
    names = [site.name for site in cap.sites]
    per_batch = [(n, rows) for rows in (16, 16, 8) for n in [*names, OUTPUTS]]
    assert [(n, rows) for n, rows, _ in seen] == per_batch
    assert not any(published for n, _, published in seen if n != OUTPUTS)
    assert all(has_logits for n, _, has_logits in seen if n == OUTPUTS)
    assert len(store.entries()) == len(names) + 1
    assert _same(cap, engine(store=store).capture(0, "random")) and len(captures) == 1


def test_an_interrupted_capture_leaves_no_readable_entry(engine, captures, tmp_path,
                                                         monkeypatch):
    store = ActivationStore(tmp_path / "s", chunk_bytes=4 * 16 * 4)  # chunks of a few rows
    eng = engine(store=store)
    real_loader = eng.loader

    def interrupted():
        for i, batch in enumerate(real_loader()):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(eng, "loader", interrupted)
    with pytest.raises(KeyboardInterrupt):
        eng.capture(0, "random")
    assert store.entries() == [] and store.unpublished() == []  # aborted: nothing kept
    first = engine(store=store).capture(0, "random")  # a miss: captured and written
    assert len(captures) == 2 and len(store.entries()) == len(first.sites) + 1
    assert _same(first, engine(store=store).capture(0, "random")) and len(captures) == 2


def test_a_capture_without_logits_halts_and_is_never_read_as_one_with_logits(
        engine, captures, tmp_path):
    store = ActivationStore(tmp_path / "s")
    eng = engine(store=store)
    halted = eng.capture(0, "random", need_logits=False)
    assert halted.logits is None and len(captures) == 1
    with pytest.raises(ValueError, match="no logits"):
        _ = halted.accuracy
    assert eng.capture(0, "random", need_logits=False) is halted  # cached
    again = engine(store=store).capture(0, "random", need_logits=False)
    assert len(captures) == 1 and again.logits is None  # the labels-only entry is read
    full = eng.capture(0, "random")  # logits needed: the cached one will not do
    assert len(captures) == 2 and full.logits is not None
    assert all(_bits(full.acts[k]) == _bits(halted.acts[k]) for k in full.acts)
    assert torch.equal(full.labels, halted.labels)
    assert _same(full, engine(store=store).capture(0, "random")) and len(captures) == 2
    assert engine(store=store).capture(0, "random", need_logits=False).logits is not None
    assert len(captures) == 2  # a stored capture with logits serves one without


def test_a_second_run_of_a_spec_reads_the_store(run_cli, tiny_spec_file, captures, tmp_path):
    import polars as pl

    spec = tiny_spec_file()
    code, _, err = run_cli(spec, "--out", tmp_path / "first")
    assert code == 0, err
    assert sorted(captures) == ["random seed 0", "trained seed 0"]
    code, _, err = run_cli(spec, "--out", tmp_path / "second")
    assert code == 0, err
    assert len(captures) == 2  # the second run captured nothing: both states were read
    first = sorted((tmp_path / "first" / "units").rglob("*.parquet"))
    assert first  # the unit tables (the run's tables add its run_id)
    for table in first:
        other = tmp_path / "second" / table.relative_to(tmp_path / "first")
        assert pl.read_parquet(table).equals(pl.read_parquet(other)), table.name


# ----------------------------------------------------------------------------- mi-probe cache

def _used(store: ActivationStore, key: StoreKey, when: float) -> None:
    store.fs.pipe_file(store._path("entries", key.digest, "used.json"),
                       json.dumps({"time": when}).encode())


def test_cache_list_and_prune(tmp_path, capsys):
    store = ActivationStore(tmp_path / "s")
    keys = [dataclasses.replace(KEY, site=f"layer{i}") for i in range(3)]
    for i, key in enumerate(keys):
        store.write(key, {"acts": torch.zeros(100 * (i + 1), 50)}, info={"seed": i,
                                                                        "state": "trained"})
    now = time.time()
    _used(store, keys[0], now - 10 * 86400)
    _used(store, keys[1], now - 3 * 86400)
    args = ["--store", str(tmp_path / "s")]
    assert cache_main([*args, "list"]) == 0
    out = capsys.readouterr().out
    assert "3 entries" in out and all(f"layer{i}" in out for i in range(3))
    assert "10 days ago" in out and "trained, seed 2" in out and "100x50" in out
    assert cache_main([*args, "list", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["key"]["site"] for r in rows] == ["layer0", "layer1", "layer2"]  # oldest use first

    assert cache_main([*args, "prune", "--older-than", "5", "--dry-run"]) == 0
    assert "would delete 1 of 3" in capsys.readouterr().out and len(store.entries()) == 3
    assert cache_main([*args, "prune", "--older-than", "5"]) == 0
    assert "deleted 1 of 3" in capsys.readouterr().out
    assert [e.key["site"] for e in store.entries()] == ["layer1", "layer2"]
    sizes = {e.key["site"]: e.nbytes for e in store.entries()}
    limit = (sizes["layer2"] + 1) / 1e9
    assert cache_main([*args, "prune", "--max-size", repr(limit)]) == 0  # LRU goes first
    assert [e.key["site"] for e in store.entries()] == ["layer2"]
    capsys.readouterr()
    assert cache_main([*args, "prune", "--all"]) == 0
    assert store.entries() == [] and "deleted 1 of 1" in capsys.readouterr().out


def test_cache_command_errors(tmp_path, capsys, monkeypatch):
    args = ["--store", str(tmp_path / "s")]
    assert cache_main([*args, "list"]) == 0
    assert "0 entries (nothing stored yet)" in capsys.readouterr().out
    ActivationStore(tmp_path / "s").write(KEY, _arrays())
    assert cache_main([*args, "prune"]) == 1
    assert "say what to delete: --older-than DAYS, --max-size GB or --all" in \
        capsys.readouterr().err
    assert cache_main([*args, "prune", "--all", "--max-size", "1"]) == 1
    assert "give it alone" in capsys.readouterr().err
    assert cache_main([*args, "prune", "--older-than", "-1"]) == 1
    assert "must be a number >= 0" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert cache_main(["--store", str(tmp_path / "file"), "list"]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cache_main([*args, "forget"])
    # the default store lies under the cache; MI_PROBE_STORE names another one
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv(STORE_ENV, "off")
    assert cache_main(["list"]) == 0
    captured = capsys.readouterr()
    assert "turns the store off for runs" in captured.err
    assert str(tmp_path / "c" / "activations") in captured.out
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "s"))
    assert cache_main(["list"]) == 0 and "1 entry" in capsys.readouterr().out


def test_cache_lists_a_memory_url_store(capsys):
    location = f"memory://mi-probe-list-{os.getpid()}"
    ActivationStore(location).write(KEY, _arrays())
    assert cache_main(["--store", location, "list"]) == 0
    assert "1 entry" in capsys.readouterr().out
    assert cache_main(["--store", location, "prune", "--all"]) == 0
    assert ActivationStore(location).entries() == []


# ----------------------------------------------------------------------------- Ray

def _ray_available() -> bool:
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("MI_PROBE_REQUIRE_RAY") == "1":
            raise
        return False
    return True


@pytest.mark.skipif(not _ray_available(), reason="the [ray] extra is not installed")
@pytest.mark.ray
def test_two_ray_workers_read_the_store_the_driver_wrote(engine, captures, tmp_path, pm):
    """The driver captures into a store named by a file:// URL (shared storage); two Ray
    worker processes build their own engines on it and read the same bits, running no
    capture."""
    import ray

    url = (tmp_path / "shared").as_uri()
    driver = engine(store=ActivationStore(url))
    driver.capture(0, "random")
    expected = {k: _bits(v) for k, v in driver.capture(0, "random").acts.items()}
    spec_path = tmp_path / "spec-ray.yaml"
    spec_path.write_text(SPEC)
    cache = tmp_path / "cache"

    def read_in_worker(worker: int) -> tuple[int, str, dict[str, bytes]]:
        import os as _os

        from mi_probe._core import capture as _capture
        from mi_probe._core.plugins import get_plugin_manager
        from mi_probe._core.runner.context import Engine as _Engine
        from mi_probe._core.spec import load_spec as _load
        from mi_probe._core.store import ActivationStore as _Store

        def refuse(*args, **kwargs):
            raise AssertionError("a worker ran the network")

        _capture.capture = refuse
        manager = get_plugin_manager(autoload=False)
        eng = _Engine(_load(spec_path, pm=manager), manager, cache_dir=cache,
                      log=lambda m: None, progress=False, store=_Store(url))
        cap = eng.capture(0, "random")
        return worker, str(_os.getpid()), {
            k: v.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            for k, v in cap.acts.items()}

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"MI_PROBE_DISABLE_PLUGIN_AUTOLOAD": "1"}})
    try:
        remote = ray.remote(num_cpus=1)(read_in_worker)
        results = ray.get([remote.remote(i) for i in range(2)], timeout=300)
    finally:
        ray.shutdown()
    assert len({pid for _, pid, _ in results}) == 2  # two worker processes
    for _, _, acts in results:
        assert acts == expected
    assert captures == ["random seed 0"]  # only the driver captured
