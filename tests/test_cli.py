"""The command line itself: help on every argument, a startup that does not import
torch where no command needs it, and shell completion.

Startup speed is measured by benchmarks/bench_cli_startup.py, never timed here; these
tests check the structure that makes it fast (what is imported).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

from mi_probe import cli


def _parsers(parser: argparse.ArgumentParser, path: str = "mi-probe"):
    """(command path, parser) for the parser and every subparser, recursively."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_argument_of_every_command_has_help():
    missing = []
    for path, parser in _parsers(cli._parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{path}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "arguments without help:\n  " + "\n  ".join(missing)


def test_the_walk_sees_every_subcommand():
    paths = {path for path, _ in _parsers(cli._parser())}
    assert {f"mi-probe {c}" for c in cli.COMMANDS} <= paths


# ------------------------------------------------------------------------- startup

def _run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter (the test session's environment, so plugin
    autoload is as conftest sets it) and parse the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "timm", "torchvision")
_REPORT = f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"


def test_importing_the_cli_imports_no_torch():
    assert _run_python(f"import json, sys, mi_probe.cli; {_REPORT}") == []


@pytest.mark.parametrize("command", ["plugins", "schema", "--help"])
def test_plugins_schema_and_help_import_no_torch(command):
    """Both need every plugin's params model (pydantic), none of the run machinery: the
    built-in plugin modules import torch, timm and the kernels inside the functions that
    run."""
    code = ("import contextlib, io, json, sys\n"
            "from mi_probe.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        rc = main([{command!r}])\n"
            "    except SystemExit as exc:\n"  # --help exits through argparse
            "        rc = exc.code\n"
            f"assert rc == 0, rc\n{_REPORT}")
    assert _run_python(code) == []


def test_builtin_plugin_modules_import_no_torch():
    code = ("import importlib, json, sys\n"
            "from mi_probe._core.plugins import BUILTIN_PLUGINS\n"
            "for name in BUILTIN_PLUGINS:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n"
            f"{_REPORT}")
    assert _run_python(code) == []


def test_histogram_chunk_default_is_the_kernels():
    """The params model writes the default out (importing the kernels loads torch)."""
    from mi_probe.builtin.estimators.histogram import HistogramParams
    from mi_probe.functional import histogram as F

    assert HistogramParams().chunk_cells == F.DEFAULT_CHUNK_CELLS


# ------------------------------------------------------------------------ completion

def test_bash_completion_mentions_every_subcommand(capsys):
    pytest.importorskip("shtab")
    assert cli.main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    listed = next(line for line in script.splitlines()
                  if line.startswith("_shtab_mi_probe_subparsers="))
    assert listed.split("=", 1)[1].strip("()").split() == list(cli.COMMANDS)
    for command in cli.COMMANDS:  # and each has its own option list
        assert f"_shtab_mi_probe_{command.replace('-', '_')}_option_strings=" in script
    # spec files complete as file names, run directories as folders
    assert "_shtab_mi_probe_run_pos_0_COMPGEN=_shtab_compgen_files" in script
    assert "_shtab_mi_probe_report_pos_0_COMPGEN=_shtab_compgen_dirs" in script


def test_zsh_completion_is_generated():
    pytest.importorskip("shtab")
    script = cli.completion_script("zsh")
    assert script.startswith("#compdef mi-probe")
    assert all(command in script for command in cli.COMMANDS)


def test_completion_without_shtab_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shtab", None)  # import shtab raises ImportError
    assert cli.main(["completion", "bash"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mi-probe[completion]" in err


def test_completion_builds_no_plugin_manager(monkeypatch):
    pytest.importorskip("shtab")
    import mi_probe._core.plugins as plugins

    def refuse(*args, **kwargs):
        raise AssertionError("completion must not load plugins")

    monkeypatch.setattr(plugins, "get_plugin_manager", refuse)
    assert cli.main(["completion", "bash"]) == 0


def test_unknown_shell_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["completion", "fishy"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
