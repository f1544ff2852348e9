"""What a new user hits first (issue 14, items 1-3 and 5): mistakes refused before any
training, clear errors instead of tracebacks, honest states, signals, locks, a cache
that does not depend on the working directory, and the Python API. Issue 26: bad input
(data folders, weights files, damaged tables, impossible paths) is a clear message and
a non-zero exit status, never a traceback or a silent wrong answer."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
from pathlib import Path

import polars as pl
import pytest
import torch

from mi_probe import cli
from mi_probe.errors import DataError, RunError, SpecError
from mi_probe._core.runner import driver
from mi_probe._core.runner.rundir import RunLock, default_cache_dir
from mi_probe._core.spec import load_spec, load_spec_text



def spec_text(tiny_text: str, *replacements: tuple[str, str], extra: str = "") -> str:
    for old, new in replacements:
        assert old in tiny_text, old
        tiny_text = tiny_text.replace(old, new)
    return tiny_text + extra


@pytest.fixture
def tiny_text():
    from conftest import TINY_SPEC

    return TINY_SPEC


@pytest.fixture
def two_seeds(tiny_text):
    return tiny_text.replace("seeds: [0]", "seeds: [0, 1]")


def run_cli(pm, capsys, *argv):
    code = cli.main(["run", *map(str, argv), "--no-progress"], pm=pm)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------- 1. fail before training

BAD_SPECS = {
    "site pattern": (("*.post_add", "*.post_addd"), r"site pattern\(s\) \['\*\.post_addd'\] "
                     r"match no site of test_resnet"),
    "architecture": (("arch: test_resnet", "arch: resnt18"),
                     r"unknown model architecture 'resnt18'.*did you mean 'resnet18'"),
    "claim table": (None, r"table 'layer_mii' is not one experiment 'layer_mi' writes.*did you "
                    r"mean 'layer_mi'"),
    "claim column": (None, r"table 'layer_mi' has no column 'i_tyy'.*did you mean 'i_ty'"),
}
CLAIMS = {
    "claim table": "checks:\n  - {name: x, kind: bound, table: layer_mii, value: i_ty, min: 0}\n",
    "claim column": "checks:\n  - {name: x, kind: bound, table: layer_mi, value: i_tyy, min: 0}\n",
}


def bad_spec(case: str, folder: Path, tiny_text: str) -> tuple[Path, str]:
    """The spec file of a BAD_SPECS case, and the message expected for it."""
    replacement, message = BAD_SPECS[case]
    path = folder / "bad.yaml"
    path.write_text(spec_text(tiny_text, *([replacement] if replacement else []),
                              extra=CLAIMS.get(case, "")))
    return path, message


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_validate_refuses_what_run_would_refuse_after_training(case, pm, tmp_path, capsys,
                                                               tiny_text):
    path, message = bad_spec(case, tmp_path, tiny_text)
    code = cli.main(["validate", str(path)], pm=pm)
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(message, err, re.S), err


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_run_refuses_before_any_training_or_run_directory(case, pm, tmp_path, capsys,
                                                          tiny_text):
    path, message = bad_spec(case, tmp_path, tiny_text)
    cache, out = tmp_path / "cache", tmp_path / "run"
    code, _, err = run_cli(pm, capsys, path, "--out", out, "--cache-dir", cache)
    assert code != 0 and "Traceback" not in err
    assert re.search(message, err, re.S), err
    assert not (cache / "models").exists(), "a model was trained before the refusal"
    assert not out.exists()


def test_a_claim_about_a_summary_table_is_left_to_the_run(pm, tmp_path, tiny_text):
    text = tiny_text + ("checks:\n  - {name: s, kind: bound, table: summary_layer_mi, "
                        "value: i_ty_mean, min: 0}\n")
    from mi_probe._core.preflight import preflight

    preflight(load_spec_text(text, "s.yaml", pm=pm), pm)  # no error


# ------------------------------------------------------------- 2. clear errors, honest state

def test_an_out_folder_that_cannot_be_created_is_a_clear_error(pm, tmp_path, capsys,
                                                               tiny_spec_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(pm, capsys, tiny_spec_file(), "--out", blocker / "run")
    assert code == 1 and "Traceback" not in err
    assert f"cannot create the run directory {blocker / 'run'}" in err
    assert "choose a writable --out" in err


def test_a_cache_folder_that_cannot_be_written_is_a_clear_error(pm, tmp_path, capsys,
                                                                tiny_spec_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, _, err = run_cli(pm, capsys, tiny_spec_file(), "--out", tmp_path / "run",
                           "--cache-dir", blocker / "cache")
    assert code == 1 and "Traceback" not in err
    assert f"cannot write to the model cache {blocker / 'cache' / 'models'}" in err
    assert "--cache-dir" in err


def test_digits_at_1024_px_are_upsampled_per_item(pm):
    entry = pm.registry.get("datasets", "digits")
    bundle = entry.factory(entry.params_model(image_size=1024)).load()
    assert tuple(bundle.val.images.shape[1:]) == (8, 8)  # nothing resized up front
    image, label = bundle.val[0]
    assert image.shape == (3, 1024, 1024) and image.dtype == torch.float32
    train_image, _ = bundle.train[0]
    assert train_image.shape == (3, 1024, 1024)


def test_a_data_set_that_cannot_fit_is_refused_with_the_estimate(pm, monkeypatch):
    from mi_probe._core import data

    monkeypatch.setattr(data, "available_memory", lambda: 2**30)  # 1 GiB available
    entry = pm.registry.get("datasets", "synthetic")
    source = entry.factory(entry.params_model(n_train=256, n_val=256, image_size=512))
    with pytest.raises(DataError, match=r"512 images of 3x512x512 float32 would take 1\.5 "
                       r"GiB in memory, more than 50% of the 1\.0 GiB available"):
        source.load()


def test_zero_epochs_is_refused_not_labelled_trained(pm, tiny_text):
    with pytest.raises(SpecError) as exc:
        load_spec_text(tiny_text, "s.yaml", ["model.train.epochs=0"], pm)
    problems = "\n".join(exc.value.problems)
    assert "--set model.train.epochs=0: model.train.epochs" in problems
    assert "epochs must be at least 1, got 0" in problems and "random state" in problems


def test_a_set_argument_is_blamed_for_its_own_mistake(pm, tiny_text):
    with pytest.raises(SpecError) as exc:
        load_spec_text(tiny_text, "s.yaml", ["foo.bar=1"], pm)
    problems = "\n".join(exc.value.problems)
    assert problems.startswith("--set foo.bar=1: "), problems
    assert "s.yaml:" not in problems


def _interrupt_after_first_unit(monkeypatch, how):
    """Make the first finished analysis unit be followed by ``how()`` (a signal or a
    KeyboardInterrupt), as a user's Ctrl-C or a scheduler's SIGTERM would."""
    original = driver.run_analysis_unit
    calls = []

    def unit(engine, run_dir, name, plan):
        seconds = original(engine, run_dir, name, plan)
        calls.append(name)
        if len(calls) == 1:
            how()
        return seconds

    monkeypatch.setattr(driver, "run_analysis_unit", unit)
    return calls


def test_sigterm_is_handled_like_ctrl_c(pm, tmp_path, two_seeds, monkeypatch):
    spec = load_spec_text(two_seeds, "s.yaml", pm=pm)
    _interrupt_after_first_unit(monkeypatch, lambda: os.kill(os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt) as exc:
        driver.run(spec, pm, out=out, cache_dir=tmp_path / "cache", progress=False,
                   log=lambda _m: None)
    assert isinstance(exc.value, driver.Terminated) and exc.value.run_dir == out
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted"
    assert (out / "units" / "seed=0" / "done.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is removed afterwards
    resumed = driver.run(spec, pm, out=out, cache_dir=tmp_path / "cache", progress=False,
                         log=lambda _m: None)
    assert resumed.status == "complete" and set(resumed.tables["layer_mi"]["seed"]) == {0, 1}


def test_the_interrupt_hint_and_resume_agree_from_another_folder(pm, tmp_path, capsys,
                                                                 two_seeds, monkeypatch):
    spec = tmp_path / "s.yaml"
    spec.write_text(two_seeds)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    monkeypatch.chdir(first)

    def ctrl_c():
        raise KeyboardInterrupt

    calls = _interrupt_after_first_unit(monkeypatch, ctrl_c)
    with pytest.raises(KeyboardInterrupt):  # propagates: a caller of cli.main stops too
        run_cli(pm, capsys, spec, "--set", "eval.batch_size=30")  # ./reports/...
    err = capsys.readouterr().err
    run_dir = next((first / "reports" / "tiny").iterdir())
    assert (f"`mi-probe run {spec.resolve()} --set eval.batch_size=30 --no-progress --out "
            f"{run_dir.resolve()}`") in err and "--resume" in err
    monkeypatch.chdir(second)  # a new terminal, somewhere else
    code, out, err = run_cli(pm, capsys, spec, "--set", "eval.batch_size=30", "--resume")
    assert code == 0, err
    assert f"run directory: {run_dir.resolve()}  (resuming)" in err
    assert "reused 1 finished unit(s)" in err and calls[-1] == "seed=1"
    assert not (second / "reports").exists()


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_runs(
        pm, tmp_path, capsys, tiny_spec_file):
    out = tmp_path / "run"
    out.mkdir()
    with RunLock(out):  # the first run, still going
        code, _, err = run_cli(pm, capsys, tiny_spec_file(), "--out", out)
    assert code == 1
    assert f"another mi-probe run is writing to {out}" in err and "another --out" in err
    code, _, err = run_cli(pm, capsys, tiny_spec_file(), "--out", out)  # once it ended
    assert code == 0, err


def test_a_second_process_waits_for_the_model_another_is_training(tmp_path):
    """The second waits (with a message) while the first holds the model's lock, and
    goes on once it is released. Events, not sleeps: under load only the failure path
    waits for the generous timeouts."""
    from filelock import FileLock

    from mi_probe._core.train import model_lock

    folder = tmp_path / "models" / "abc"
    folder.parent.mkdir(parents=True)
    holder = FileLock(str(folder) + ".lock")  # another process, training this model
    holder.acquire()
    messages, waiting, done = [], threading.Event(), threading.Event()

    def log(message):
        messages.append(message)
        waiting.set()

    def second():
        with model_lock(folder, log):
            done.set()

    thread = threading.Thread(target=second, daemon=True)
    try:
        thread.start()
        assert waiting.wait(timeout=120), "the second process never said it waits"
        assert "another mi-probe process is training this model" in messages[0]
        assert not done.is_set()  # blocked on the lock until the first releases it
    finally:
        holder.release()
    assert done.wait(timeout=120)
    thread.join(timeout=120)


# ------------------------------------------------------------- 3. the working directory

def test_the_default_cache_is_the_user_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MI_PROBE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):  # platformdirs: XDG on Linux
        assert default_cache_dir() == tmp_path / "xdg" / "mi-probe"
    monkeypatch.setenv("MI_PROBE_CACHE", "~/somewhere")
    assert default_cache_dir() == Path.home() / "somewhere"


def test_runs_record_absolute_cache_paths(pm, tmp_path, monkeypatch, tiny_spec_file):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(tiny_spec_file(), pm=pm)
    outcome = driver.run(spec, pm, out=Path("run"), cache_dir=Path("relative-cache"),
                         progress=False, log=lambda _m: None)
    info = json.loads((outcome.run_dir / "run.json").read_text())
    cache = info["trained_models"]["0"]["default"]["cache"]
    assert Path(cache).is_absolute() and Path(cache).is_relative_to(tmp_path / "relative-cache")


# ------------------------------------------------------------- 5. the Python API

def test_the_python_api_runs_a_spec_and_reopens_it(tmp_path, tiny_spec_file, monkeypatch, capsys):
    import altair as alt

    import mi_probe

    monkeypatch.chdir(tmp_path)
    path = tiny_spec_file(extra="checks:\n  - {name: finite, kind: bound, table: layer_mi, "
                                "value: i_ty, min: 0}\n")
    result = mi_probe.run(path, out=tmp_path / "api", seeds=[0, 1],
                          model__train__epochs=1, overrides={"eval.batch_size": 32})
    assert isinstance(result, mi_probe.Run) and result.status == "complete"
    # a notebook run talks by default, as the command does
    assert f"run directory: {tmp_path / 'api'}" in capsys.readouterr().err
    layer = result.tables["layer_mi"]
    assert isinstance(layer, pl.DataFrame) and set(layer["seed"]) == {0, 1}
    assert result.spec.model.train.epochs == 1 and result.spec.eval.batch_size == 32
    assert [c["name"] for c in result.checks] == ["finite"] and not result.failed_checks
    assert result.figures and all(isinstance(c, alt.TopLevelMixin)
                                  for c in result.figures.values())
    # the figure the module docstring shows exists (it once named one that did not)
    assert set(re.findall(r'figures\["(\w+)"\]', mi_probe.api.__doc__)) <= set(result.figures)
    view = result._repr_html_()  # what Jupyter shows for the result
    assert "status <b>complete</b>" in view and "<b>holds</b>: finite" in view
    assert all(f"<code>{name}</code>" in view for name in result.figures)
    assert result.index.is_file()
    again = mi_probe.load_run(tmp_path / "api")
    assert again.tables["layer_mi"].equals(layer) and again.checks == result.checks
    with pytest.raises(RunError, match=r"has no table 'nope'; it has .*layer_mi"):
        again.table("nope")
    with pytest.raises(RunError, match=r"is not an mi-probe run directory"):
        mi_probe.load_run(tmp_path)
    with pytest.raises(SpecError, match=r"--set model.train.epochs=0"):
        mi_probe.run(path, out=tmp_path / "bad", model__train__epochs=0)


def test_sites_of_a_regulariser_named_by_the_experiment_are_checked_before_training(
        pm, tmp_path, capsys, tiny_text):
    text = tiny_text.replace("experiment: {kind: layer_mi}", "experiment: {kind: hsic_compare, "
                             "regularizer: {kind: hsic, sites: ['*.post_addd']}}")
    path = tmp_path / "h.yaml"
    path.write_text(text)
    assert cli.main(["validate", str(path)], pm=pm) == 2
    assert "site pattern(s) ['*.post_addd'] match no site" in capsys.readouterr().err


# ------------------------------------------------------------- issue 26: bad input

def image_folder(root: Path, counts: dict[str, tuple[int, int]]) -> Path:
    """``root/train/<class>/`` and ``root/val/<class>/`` with (n_train, n_val) tiny PNGs
    per class."""
    from PIL import Image

    for k, (name, per_split) in enumerate(counts.items()):
        for split, n in zip(("train", "val"), per_split):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                colour = [40 * i % 255, 0, 0]
                colour[k % 3] = 200
                Image.new("RGB", (16, 16), tuple(colour)).save(folder / f"{i}.png")
    return root


def folder_spec(tiny_text: str, root: Path | str) -> str:
    return spec_text(tiny_text, (
        "data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, "
        "noise: 0.5}", f"data: {{kind: imagefolder, root: '{root}', image_size: 16}}"),
        ("epochs: 2", "epochs: 1"))


def validate_cli(pm, capsys, folder: Path, text: str) -> tuple[int, str]:
    path = folder / "v.yaml"
    path.write_text(text)
    code = cli.main(["validate", str(path)], pm=pm)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.out + captured.err


@pytest.mark.parametrize("case", ["a file", "missing", "no val"])
def test_validate_refuses_an_image_folder_that_cannot_hold_the_data(case, pm, tmp_path, capsys,
                                                                   tiny_text):
    root = tmp_path / "data"
    if case == "a file":
        root.write_text("not a folder")
    elif case == "no val":
        (root / "train" / "cat").mkdir(parents=True)
    code, text = validate_cli(pm, capsys, tmp_path, folder_spec(tiny_text, root))
    assert code == 2 and "ok:" not in text
    expected = {"a file": rf"data.root: data folder {root} is a file; expected a folder "
                          r"holding train/ and val/",
                "missing": rf"data.root: data folder {root} does not exist; expected a folder "
                           r"holding train/ and val/",
                "no val": rf"split folder {root / 'val'} does not exist; expected the "
                          r"Imagenette2 layout .*found subfolders \['train'\]"}[case]
    assert re.search(expected, text), text


def test_validate_refuses_a_weights_file_that_is_not_there(pm, tmp_path, capsys, tiny_text,
                                                          monkeypatch):
    missing = "/path/that/does/not/exist.safetensors"
    code, text = validate_cli(pm, capsys, tmp_path,
                              spec_text(tiny_text, ("weights: train", f"weights: {missing}")))
    assert code == 2
    assert f"error: model.weights: weights file {missing} does not exist; expected a " \
           ".safetensors file" in text
    monkeypatch.chdir(tmp_path)  # a relative path names the folder it is relative to
    code, text = validate_cli(pm, capsys, tmp_path,
                              spec_text(tiny_text, ("weights: train", "weights: m.safetensors")))
    assert code == 2 and f"m.safetensors (relative to the working folder {tmp_path})" in text


def test_an_image_folder_with_one_class_is_refused(pm, tmp_path, capsys, tiny_text):
    root = image_folder(tmp_path / "data", {"cat": (3, 3)})
    code, text = validate_cli(pm, capsys, tmp_path, folder_spec(tiny_text, root))
    assert code == 2
    assert f"{root / 'train'} has one class folder, 'cat'; expected at least 2 classes" in text


def test_a_class_with_one_evaluation_image_is_a_warning_of_the_run(pm, tmp_path, capsys,
                                                                  tiny_text):
    from mi_probe.builtin.datasets.imagefolder import ImageFolderParams, ImageFolderSource

    root = image_folder(tmp_path / "data", {"cat": (4, 3), "dog": (1, 1), "fish": (4, 3)})
    bundle = ImageFolderSource(ImageFolderParams(root=str(root), image_size=16)).load()
    assert bundle.warnings == [
        f"class(es) with fewer than 2 training images in {root / 'train'}: dog (1); "
        "per-class results for them rest on one image or none",
        f"class(es) with fewer than 2 evaluation images in {root / 'val'}: dog (1); "
        "per-class results for them rest on one image or none"]
    spec = tmp_path / "few.yaml"
    spec.write_text(folder_spec(tiny_text, root))
    code, _, err = run_cli(pm, capsys, spec, "--out", tmp_path / "run", "--cache-dir",
                           tmp_path / "cache")
    assert code == 0, err
    assert f"warning: class(es) with fewer than 2 evaluation images in {root / 'val'}: " \
           "dog (1)" in err
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "complete" and bundle.warnings[1] in info["warnings"]
    assert "dog (1)" in (tmp_path / "run" / "index.html").read_text()


def test_report_on_a_damaged_table_names_the_file(pm, tmp_path, capsys, tiny_text):
    from mi_probe._core.tables import read_tables

    run = tmp_path / "run"
    (run / "tables").mkdir(parents=True)
    (run / "spec.yaml").write_text(tiny_text)
    (run / "run.json").write_text(json.dumps({"status": "complete"}))
    pl.DataFrame({"a": [1]}).write_parquet(run / "tables" / "a_fine.parquet")
    bad = run / "tables" / "layer_mi.parquet"
    bad.write_bytes(b"PAR1 cut short")
    with pytest.raises(RunError, match=rf"cannot read table {re.escape(str(bad))}: expected "
                       r"a parquet table; found a damaged or foreign file \(.+\)\. Running "
                       rf"the spec again with --out {re.escape(str(run))} rewrites"):
        read_tables(run / "tables")
    code = cli.main(["report", str(run)], pm=pm)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot read table {bad}: ") and len(err.splitlines()) == 1


def test_an_out_name_too_long_for_the_filesystem_is_a_clear_error(pm, tmp_path, capsys,
                                                                 tiny_spec_file):
    out = tmp_path / ("x" * 300) / "run"
    code, _, err = run_cli(pm, capsys, tiny_spec_file(), "--out", out,
                           "--cache-dir", tmp_path / "cache")
    assert code == 1 and "Traceback" not in err
    assert f"error: cannot use {out} as the run directory: its folder name " \
           f"{'x' * 40}... is 300 bytes long; file names may have at most 255; choose a " \
           "shorter --out" in err
    assert not (tmp_path / "cache" / "models").exists()


def test_the_notebook_view_of_a_run_escapes_what_it_shows(tmp_path):
    import mi_probe

    run = tmp_path / "run"
    run.mkdir()
    checks = [{"name": "<script>x</script>", "verdict": "does not hold", "passed": False,
               "detail": "mean 0.1 < 0.2 & more"},
              {"name": "old", "passed": True, "detail": "written before verdicts"}]
    (run / "run.json").write_text(json.dumps({"status": "running", "checks": checks}))
    view = mi_probe.load_run(run)._repr_html_()
    assert "<script>" not in view and "&lt;script&gt;x&lt;/script&gt;" in view
    assert "<b>does not hold</b>: &lt;script&gt;" in view and "0.1 &lt; 0.2 &amp; more" in view
    assert "<b>holds</b>: old" in view and "status <b>running</b>" in view
    assert "figures" not in view  # only a complete run has them


def test_the_command_turns_an_interrupt_into_exit_status_130(monkeypatch):
    """``mi-probe`` (cli.entry) exits 130 on Ctrl-C, without a traceback; cli.main lets
    the interrupt propagate (a test suite calling it stops on Ctrl-C)."""
    def interrupted(argv=None, pm=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "main", interrupted)
    with pytest.raises(SystemExit) as exc:
        cli.entry()
    assert exc.value.code == 130


def test_ray_leaves_the_sigterm_handler_as_it_was():
    """ray.init installs a SIGTERM handler that raises SystemExit wherever the process
    is (a test runner then only fails its running test); the executor puts the previous
    handler back. In a fresh process, so the session's own Ray does not hide it."""
    import subprocess
    import sys

    pytest.importorskip("ray")
    code = ("import signal\n"
            "before = signal.getsignal(signal.SIGTERM)\n"
            "from mi_probe.builtin.executors.ray import RayExecutor, RayParams\n"
            "executor = RayExecutor(RayParams(address='local', num_cpus=1))\n"
            "executor._connect()\n"
            "same = signal.getsignal(signal.SIGTERM) == before\n"
            "executor.close()\n"
            "print('same' if same else 'replaced')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.strip().splitlines()[-1] == "same", done.stderr[-2000:]
