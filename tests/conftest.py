"""Shared fixtures: a plugin manager without entry points, tiny specs on synthetic data."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("MI_PROBE_DISABLE_PLUGIN_AUTOLOAD", "1")

from mi_probe.functional import counting  # noqa: E402
from mi_probe._core.plugins import get_plugin_manager  # noqa: E402

# pytester's in-process runs restore sys.modules afterwards: numba modules first imported
# inside one (numba imports parts of itself lazily on its first compile) would be dropped
# and imported again later, and two copies of numba's registries in one process fail
# ("duplicate registration", "cannot augment"). Compiling (or loading) the kernels here
# puts all of numba in the snapshot.
counting.warm_up()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _own_model_cache(tmp_path, monkeypatch):
    """Each test gets its own default model cache (never the user's ~/.cache/mi-probe);
    a test that sets MI_PROBE_CACHE or passes a cache folder overrides it."""
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "default-model-cache"))


@pytest.fixture(scope="session")
def pm():
    return get_plugin_manager(autoload=False)


TINY_SPEC = """\
name: tiny
seeds: [0]
data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, noise: 0.5}
model:
  arch: test_resnet
  weights: train
  train: {epochs: 2, batch_size: 16, lr: 0.05}
sites: {include: ["*.post_add"]}
estimator: {kind: histogram, bins: 8}
experiment: {kind: layer_mi}
report: {formats: [png]}
"""


@pytest.fixture
def run_cli(tmp_path, monkeypatch, pm, capsys):
    """``mi-probe run ARGS --no-progress`` in-process, in tmp_path with its own model
    cache; returns (exit code, stdout, stderr)."""
    from mi_probe import cli

    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def call(*argv):
        code = cli.main(["run", *map(str, argv), "--no-progress"], pm=pm)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


@pytest.fixture
def tiny_spec_file(tmp_path):
    """Write a tiny layer_mi spec (extra YAML lines appended) and return its path."""

    def make(extra: str = "", text: str = TINY_SPEC, name: str = "tiny.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text + textwrap.dedent(extra))
        return path

    return make


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny models on one torch thread: on a shared 2-core machine
    intra-op threads only add contention (modules opt in with usefixtures)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Trained tiny models shared by the transplant / cover / skip_gain tests."""
    return tmp_path_factory.getbasetemp() / "mi_probe_tiny_models"


@pytest.fixture(scope="session")
def tiny_engine(pm, shared_cache):
    """``make(folder, text)``: an Engine for spec ``text`` written to ``folder``, with the
    shared tiny-model cache (module fixtures of the experiment tests use it)."""
    from mi_probe._core.runner.context import Engine
    from mi_probe._core.spec import load_spec

    def make(folder: Path, text: str):
        path = folder / "spec.yaml"
        path.write_text(text)
        return Engine(load_spec(path, pm=pm), pm, cache_dir=shared_cache,
                      log=lambda m: None, progress=False)

    return make


@pytest.fixture
def cli_run_writes(tmp_path, monkeypatch, pm, capsys, shared_cache):
    """``check(text, files)``: ``mi-probe run`` on spec ``text`` must exit 0 and write
    every path in ``files`` (relative to the run directory), which it returns."""
    from mi_probe import cli

    monkeypatch.setenv("MI_PROBE_CACHE", str(shared_cache))

    def check(text: str, files) -> Path:
        spec = tmp_path / "spec.yaml"
        spec.write_text(text)
        run = tmp_path / "r"
        code = cli.main(["run", str(spec), "--out", str(run), "--no-progress"], pm=pm)
        err = capsys.readouterr().err
        assert code == 0, err
        for name in files:
            assert (run / name).is_file(), name
        return run

    return check


#: Edge cases of an (N, C) activation matrix that estimators must answer bit for bit
#: the same on every path (tests/test_prepare.py, tests/test_streaming.py).
EDGE_CASES = ("all_ties", "all_constant", "one_sample", "one_channel", "no_channels",
              "float64", "float16", "bfloat16", "huge_range", "negative_zero")


def edge_case_layer(case: str, classes: int, n: int = 200, c: int = 6):
    """(activations, labels) of one ``EDGE_CASES`` case, seeded."""
    import torch

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (n,), generator=g)
    x = torch.randn(n, c, generator=g)
    if case == "all_ties":
        x = torch.randint(0, 4, (n, c), generator=g).float()
    elif case == "all_constant":
        x = torch.full((n, c), -2.5)
    elif case == "one_sample":
        x, labels = x[:1], labels[:1]
    elif case == "one_channel":
        x = x[:, :1]
    elif case == "no_channels":
        x = x[:, :0]
    elif case == "float64":
        x = x.double()
    elif case == "float16":
        x = x.half()
    elif case == "bfloat16":
        x = x.bfloat16()
    elif case == "huge_range":  # max − min overflows a double: halved columns
        x = x.double()
        x[0, :2], x[1, :2] = -1.7e308, 1.7e308
    elif case == "negative_zero":
        x = torch.where(x > 0, x, torch.tensor(-0.0))
        x[:, 0] = torch.where(torch.arange(n) % 2 == 0, 0.0, -0.0)
    elif case not in EDGE_CASES:
        raise ValueError(f"unknown edge case {case!r}")
    return x, labels
