"""``mi-probe study``: per-seed verdicts of the paper's claims and the generated
reproduction document (issue 15)."""

from __future__ import annotations

import json
import math
import re

import polars as pl
import pytest

from mi_probe import cli
from mi_probe._core.checks import BoundCheck, CompareCheck, TrendCheck
from mi_probe._core.claims import FAILS, HOLDS, INCONCLUSIVE, judge as verdict


def knockout_rows(effects: dict[int, float], sites=("a", "b")) -> pl.DataFrame:
    """drop = 0.1 for random; top = 0.1 + the seed's effect (the same at every site)."""
    rows = []
    for seed, effect in effects.items():
        for site in sites:
            rows.append({"seed": seed, "site": site, "selection": "random", "drop": 0.1})
            rows.append({"seed": seed, "site": site, "selection": "top", "drop": 0.1 + effect})
    return pl.DataFrame(rows)


def compare(margin=0.0):
    return CompareCheck(name="top beats random", table="knockout", value="drop",
                        by="selection", greater="top", lesser="random", margin=margin)


def test_compare_verdicts_follow_the_per_seed_interval():
    holds = verdict(compare(), {"knockout": knockout_rows({0: 0.2, 1: 0.3, 2: 0.25})})
    assert holds.verdict == HOLDS and holds.n == 3
    assert holds.mean == pytest.approx(0.25)
    # t(0.95, 2) = 2.920 (a 90% interval: one-sided 5% tests); sd of (0.2, 0.3, 0.25) = 0.05
    assert holds.high - holds.mean == pytest.approx(2.919986 * 0.05 / math.sqrt(3), rel=1e-5)
    fails = verdict(compare(), {"knockout": knockout_rows({0: -0.2, 1: -0.3, 2: -0.25})})
    assert fails.verdict == FAILS
    mixed = verdict(compare(), {"knockout": knockout_rows({0: -0.2, 1: 0.3, 2: 0.05})})
    assert mixed.verdict == INCONCLUSIVE and "interval contains 0" in mixed.reason
    above_margin = verdict(compare(margin=0.5), {"knockout": knockout_rows({0: 0.2, 1: 0.3,
                                                                            2: 0.25})})
    assert above_margin.verdict == FAILS and "above 0.5" in above_margin.reason
    one = verdict(compare(), {"knockout": knockout_rows({0: 0.2})})
    assert one.verdict == INCONCLUSIVE and "one seed" in one.reason


def test_sites_of_a_seed_are_averaged_before_the_interval():
    rows = knockout_rows({0: 0.2, 1: 0.2, 2: 0.2}, sites=("a", "b", "c", "d"))
    result = verdict(compare(), {"knockout": rows})
    assert result.n == 3 and result.low == pytest.approx(0.2) and result.verdict == HOLDS


def test_trend_and_bound_verdicts():
    rows = [{"seed": s, "depth": d, "i_ty": d * (1 if s < 2 else 0.5) + 0.01 * s}
            for s in range(3) for d in range(5)]
    table = {"layer_mi": pl.DataFrame(rows)}
    rises = TrendCheck(name="rises", table="layer_mi", value="i_ty", min_spearman=0.5)
    assert verdict(rises, table).verdict == HOLDS
    falls = TrendCheck(name="falls", table="layer_mi", value="i_ty", direction="decreasing")
    assert verdict(falls, table).verdict == FAILS
    # per-seed means 2.00, 2.01, 2.02: a tight interval around 2.01
    steady = {"layer_mi": pl.DataFrame([{"seed": s, "depth": d, "i_ty": d + 0.01 * s}
                                        for s in range(3) for d in range(5)])}
    bound = BoundCheck(name="positive", table="layer_mi", value="i_ty", min=0.0, aggregate="mean")
    assert verdict(bound, steady).verdict == HOLDS
    tight = BoundCheck(name="below", table="layer_mi", value="i_ty", max=1.0, aggregate="mean")
    assert verdict(tight, steady).verdict == FAILS
    edge = BoundCheck(name="edge", table="layer_mi", value="i_ty", max=2.01, aggregate="mean")
    assert verdict(edge, steady).verdict == INCONCLUSIVE
    # per-seed minimum: every seed has a layer below 0.5
    low = BoundCheck(name="some low layer", table="layer_mi", value="i_ty", max=0.5,
                     aggregate="min")
    assert verdict(low, steady).verdict == HOLDS
    missing = BoundCheck(name="x", table="nope", value="i_ty", min=0.0)
    assert verdict(missing, table).verdict == INCONCLUSIVE


def test_the_study_command_writes_the_document_from_the_runs(pm, tmp_path, capsys,
                                                             monkeypatch):
    from conftest import TINY_SPEC

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a_layer_mi.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_a")
                                            .replace("seeds: [0]", "seeds: [0, 1]") + """\
checks:
  - {name: "label MI is positive", kind: bound, table: layer_mi, value: i_ty, min: 0, aggregate: mean}
""")
    (folder / "b_not_run.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_b"))
    doc, figures = tmp_path / "docs" / "reproduction.md", tmp_path / "docs" / "reproduction"
    from mi_probe._core.study import README_BEGIN, README_END

    readme = tmp_path / "README.md"  # the project's README, in the working folder
    readme.write_text(f"# x\n{README_BEGIN}\nold findings\n{README_END}\n")
    code = cli.main(["study", str(folder), "--out", str(tmp_path / "runs"), "--doc", str(doc),
                     "--figures", str(figures), "--only", "study_a"], pm=pm)
    assert code == 0, capsys.readouterr().err
    # a document named by --doc is not the project's: the README is left alone
    assert "old findings" in readme.read_text()
    text = doc.read_text()
    # the verdict rules themselves are tested above; here the row's form
    assert re.search(r"\| label MI is positive \| test_resnet \| mean i_ty per seed: [0-9.]+ "
                     r"\[-?[0-9.e-]+, "
                     r"[0-9.e-]+\], n = 2 \| \*\*(holds|inconclusive)\*\* \(", text), text
    assert "`b_not_run.yaml`: not run yet" in text and "specs run: 1 of 2" in text
    assert "- machine: " in text and "- commit: " in text
    copied = sorted(p.name for p in figures.iterdir())
    assert "study_a-layer_i_ty.png" in copied and f"](reproduction/study_a-layer_i_ty.png)" in text
    ledger = json.loads((tmp_path / "runs" / "ledger.json").read_text())
    assert [e["status"] for e in ledger["study_a"]] == ["complete"]
    # --report-only rewrites the document without running anything
    doc.unlink()
    assert cli.main(["study", str(folder), "--out", str(tmp_path / "runs"),
                     "--figures", str(figures), "--report-only"], pm=pm) == 0
    # the default document (docs/reproduction.md here) refreshes the README's findings
    assert "old findings" not in readme.read_text()
    assert "(docs/reproduction.md)" in readme.read_text()
    assert doc.is_file() and len(json.loads((tmp_path / "runs" / "ledger.json").read_text())[
        "study_a"]) == 1


def test_run_first_orders_the_study_and_refuses_unknown_names(pm, tmp_path, monkeypatch):
    """The manifest's run_first runs named specs before the others (the rest in file
    order), so that the widest capture fills the activation store first."""
    from conftest import TINY_SPEC

    from mi_probe._core import study
    from mi_probe._core.runner import driver
    from mi_probe.errors import SpecError

    folder = tmp_path / "study"
    folder.mkdir()
    for stem in ("a", "b", "c"):
        (folder / f"{stem}.yaml").write_text(TINY_SPEC.replace("name: tiny",
                                                               f"name: study_{stem}"))
    order: list[str] = []
    monkeypatch.setattr(driver, "run", lambda spec, pm, **kw: order.append(spec.name))
    (folder / "_study.yaml").write_text("run_first: [c, study_b]\n")
    assert study.run_study(folder, tmp_path / "runs", pm, log=lambda m: None) == []
    assert order == ["study_c", "study_b", "study_a"]
    (folder / "_study.yaml").write_text("run_first: [d]\n")
    with pytest.raises(SpecError, match=r"run_first names d, which is no spec of .*valid: "
                                        r"\['a', 'b', 'c'\]"):
        study.run_study(folder, tmp_path / "runs", pm, log=lambda m: None)


def test_a_figures_folder_that_holds_the_runs_is_refused_before_any_run(pm, tmp_path, capsys):
    """``--doc X.md --out X`` once made the figures folder (named after the document) the
    run directories, and the study deleted them when it replaced its figures."""
    from conftest import TINY_SPEC

    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_a"))
    runs = tmp_path / "st"
    (runs / "study_old").mkdir(parents=True)
    (runs / "study_old" / "run.json").write_text("{}")
    code = cli.main(["study", str(folder), "--out", str(runs), "--doc",
                     str(tmp_path / "st.md")], pm=pm)
    err = capsys.readouterr().err
    assert code != 0 and "overlaps the run directories (--out)" in err, err
    assert (runs / "study_old" / "run.json").is_file()  # nothing deleted
    assert not (runs / "study_a").exists()  # and nothing run


def test_figures_folders_the_study_may_and_may_not_replace(tmp_path):
    from mi_probe._core.study import FIGURES_MARKER, check_figures_dir
    from mi_probe.errors import SpecError

    runs, specs = tmp_path / "runs", tmp_path / "specs"
    (runs / "study_a" / "figures").mkdir(parents=True)
    (runs / "study_a" / "run.json").write_text("{}")
    (specs / "explain").mkdir(parents=True)
    (specs / "a.yaml").write_text("name: study_a\n")
    (specs / "b.yaml").write_text("name: study_b\n")
    (specs / "explain" / "a--more.yaml").write_text("name: study_explain_a--more\n")
    for figures, where in ((runs, "the run directories"), (tmp_path, "the run directories"),
                           (runs / "study_a" / "figures", "the run directories"),
                           (runs / "study_b" / "figs", "the run directories"),  # not run yet
                           (specs, "the spec folder"), (specs / "explain" / "f", "the spec folder")):
        with pytest.raises(SpecError, match=f"overlaps {where}"):
            check_figures_dir(figures, runs, specs)
    # a user's folder is never cleared: other files, or images the study did not name
    for name, files, named in (("paper", ("draft.tex", "study_a-x.png"), "draft.tex"),
                               ("photos", ("holiday.jpg",), "holiday.jpg"),
                               ("plots", ("plot.png",), "plot.png")):
        mine = tmp_path / name
        mine.mkdir()
        for file in files:
            (mine / file).write_bytes(b"x")
        with pytest.raises(SpecError, match=rf"not written by mi-probe study \(it holds "
                                            rf"{re.escape(named)}\)"):
            check_figures_dir(mine, runs, specs)
    # a link is refused, whatever it points to (the study would rmtree through it)
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / FIGURES_MARKER).write_text("")
    link = tmp_path / "link"
    link.symlink_to(ours)
    with pytest.raises(SpecError, match="is a symbolic link"):
        check_figures_dir(link, runs, specs)
    # a study's folder (marker), one holding only the study's figure files (written
    # before the marker existed), a new folder, one beside the runs (the smoke profile's)
    # and one in the spec folder but outside explain/ are fine
    (ours / "notes.txt").write_text("replaced with the folder")
    old = tmp_path / "old"
    old.mkdir()
    (old / "study_a-layer_i_ty.png").write_bytes(b"png")
    (old / "study_explain_a--more-plane.png").write_bytes(b"png")
    for figures in (ours, old, tmp_path / "new", runs / "reproduction", specs / "figures"):
        check_figures_dir(figures, runs, specs)


def test_study_specs_state_claims_and_share_one_model_block():
    """Every study spec states claims; the ResNet-18 specs share one model (cache key)."""
    from pathlib import Path

    import yaml

    folder = Path(__file__).resolve().parents[1] / "specs" / "study"
    from mi_probe._core.study import spec_files

    specs = {p.stem: yaml.safe_load(p.read_text()) for p in spec_files(folder)}
    assert specs and all(s.get("checks") for s in specs.values())
    assert all(len(s["seeds"]) >= 3 for s in specs.values())
    r18 = [s for name, s in specs.items() if name.startswith("r18_")]
    assert len({json.dumps([s["model"], s["data"]], sort_keys=True) for s in r18}) == 1


def test_the_readme_block_is_generated_between_its_markers(pm, tmp_path):
    from mi_probe._core.study import README_BEGIN, README_END, update_readme

    folder = tmp_path / "study"
    folder.mkdir()
    from conftest import TINY_SPEC

    (folder / "a.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_a"))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{README_BEGIN}\nold text\n{README_END}\nafter\n")
    assert update_readme(readme, tmp_path / "docs" / "reproduction.md", folder,
                         tmp_path / "runs", pm)
    text = readme.read_text()
    assert "old text" not in text and "; 1 spec(s) without a finished run: a (not run yet)" in text
    from mi_probe._core.study import load_manifest

    # this folder has no manifest: no headline claims, and nothing invented
    assert load_manifest(folder).headline == [] and "- *" not in text
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{README_END}\nafter\n")
    assert "[docs/reproduction.md](docs/reproduction.md)" in text
    plain = tmp_path / "PLAIN.md"
    plain.write_text("no markers\n")
    assert not update_readme(plain, tmp_path / "d.md", folder, tmp_path / "runs", pm)


# ------------------------------------------------------------------ explanations, staleness

EXPLAINED = """\
checks:
  - {name: "label MI is negative", kind: bound, table: layer_mi, value: i_ty, max: -10, aggregate: mean}
  - {name: "label MI is positive", kind: bound, table: layer_mi, value: i_ty, min: 0, aggregate: mean}
"""


@pytest.fixture
def one_spec_study(tmp_path, monkeypatch):
    """A study folder holding one tiny spec ``a.yaml`` (name study_a) with EXPLAINED's
    claims, its own model cache, and the CLI arguments that run it into tmp_path."""
    from conftest import TINY_SPEC

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "study"
    folder.mkdir()
    spec = folder / "a.yaml"
    spec.write_text(TINY_SPEC.replace("name: tiny", "name: study_a") + EXPLAINED)
    argv = ["study", str(folder), "--out", str(tmp_path / "runs"), "--doc",
            str(tmp_path / "doc.md"), "--readme", str(tmp_path / "none.md")]
    return spec, argv


def test_an_explanation_spec_is_compared_with_its_baseline_seed_by_seed(pm, tmp_path, capsys,
                                                                        monkeypatch):
    """explain/<baseline>--<what>.yaml re-tests the baseline's claims; the document puts
    the two runs side by side, for the same seeds and for all of the baseline's, and a
    claim that does not hold names the differences that bear on it and the test."""
    from conftest import TINY_SPEC

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "study"
    (folder / "explain").mkdir(parents=True)
    (folder / "base.yaml").write_text(
        TINY_SPEC.replace("name: tiny", "name: study_base")
        .replace("seeds: [0]", "seeds: [0, 1]") + EXPLAINED)
    (folder / "explain" / "base--3_epochs.yaml").write_text(
        TINY_SPEC.replace("name: tiny", "name: study_base--3_epochs")
        .replace("epochs: 2", "epochs: 3") + "description: three epochs instead of two\n"
        + EXPLAINED)
    doc, figures = tmp_path / "docs" / "reproduction.md", tmp_path / "docs" / "reproduction"
    from mi_probe._core.study import README_BEGIN, README_END

    (folder / "_study.yaml").write_text('headline: ["label MI is negative"]\n')
    readme = tmp_path / "README.md"
    readme.write_text(f"{README_BEGIN}\n{README_END}\n")
    argv = ["study", str(folder), "--out", str(tmp_path / "runs"), "--doc", str(doc),
            "--figures", str(figures), "--readme", str(readme)]
    assert cli.main(argv, pm=pm) == 0, capsys.readouterr().err
    # the README's headline claim, with what the one-factor runs found (1 of 2 seeds)
    assert re.search(r"- \*\*does not hold\*\* \(Holm-adjusted: .*\): label MI is negative "
                     r"\(.*\)\n  - with one factor changed: inconclusive with 3_epochs "
                     r"\(1 seed\)\n", readme.read_text()), readme.read_text()
    ledger = json.loads((tmp_path / "runs" / "ledger.json").read_text())
    assert sorted(ledger) == ["study_base", "study_base--3_epochs"]
    text = doc.read_text()
    # 0 <= I(T;Y) <= ln 3, so with two seeds the interval's low end stays above
    # ln 3 - 12.71 * ln 3 / sqrt(2) > -10: "negative" does not hold, whatever the noise
    assert re.search(r"\| label MI is negative \| test_resnet \| .* \| \*\*does not hold\*\*",
                     text), text
    section = text.split("## Testing explanations", 1)[1]
    assert "### study_base--3_epochs" in section and "three epochs instead of two" in section
    assert "- spec: `" in section and "baseline: `" in section and "base.yaml`" in section
    # the settings table, then per claim in words (one seed: inconclusive by rule)
    assert "### Which settings make the claims of `base.yaml` hold" in section
    assert ("- *label MI is negative* (baseline: does not hold): inconclusive with "
            "3_epochs (1 seed).") in section, section
    assert ("| baseline, the same seeds [0] | moved by the change | baseline, all seeds "
            "[0, 1] |") in section
    row = re.search(r"\| label MI is negative \| mean i_ty per seed: ([0-9.e-]+) \(no interval\), "
                    r"n = 1 \| ([0-9.e-]+) \(no interval\), n = 1 \| ([^|]+) \| "
                    r"([0-9.e-]+) \[.*\], n = 2 \(per seed: [0-9.e-]+, [0-9.e-]+\); "
                    r"\*\*does not hold\*\* \|", section)
    assert row, section
    here, there = float(row[1]), float(row[2])
    # a bound with only a max: a smaller value moves towards the claim (the shown values
    # are rounded, so only a clear difference decides the expected direction)
    if abs(here - there) > 0.01 * max(abs(here), abs(there)):
        toward, sign = ("towards", "-") if here < there else ("away from", "+")
        assert re.fullmatch(rf"\{sign}[0-9.e-]+ \({toward} the claim\)", row[3]), row[3]
    else:
        assert re.fullmatch(r"([+-][0-9.e-]+ \((towards|away from) the claim\)|\+0 \(unchanged\))",
                            row[3]), row[3]
    assert "best validation accuracy: here seed 0: " in section and "(3 epochs)" in section
    differ = text.split("## Where the results differ from the paper", 1)[1].split(
        "## Testing explanations")[0]
    assert re.search(r"- label MI is negative \(test_resnet; \*\*does not hold\*\*, .*\): could "
                     r"be explained by image size, epochs, data size, augmentation, image "
                     r"roles, architecture, bias correction, layer reduction\.", differ), \
        differ
    assert re.search(r"  - tested in \[study_base--3_epochs\]\(#study_base--3_epochs\) \(three "
                     r"epochs instead of two\): seeds \[0\]: [0-9.e-]+ \(no interval\), n = 1 "
                     r"there vs seeds \[0\]: [0-9.e-]+ \(no interval\), n = 1 in the study; "
                     r"moved [^.]+\.", differ), differ


def test_explanation_specs_must_name_an_existing_baseline(pm, tmp_path):
    from conftest import TINY_SPEC

    from mi_probe.errors import SpecError
    from mi_probe._core.study import explanation_files, run_study

    folder = tmp_path / "study"
    (folder / "explain").mkdir(parents=True)
    (folder / "base.yaml").write_text(TINY_SPEC)
    stray = folder / "explain" / "longer.yaml"
    stray.write_text(TINY_SPEC)
    with pytest.raises(SpecError, match=r"longer.yaml: name it <baseline>--<what>.yaml"):
        explanation_files(folder)
    stray.rename(folder / "explain" / "nobase--longer.yaml")
    with pytest.raises(SpecError, match=r"re-tests nobase.yaml, which is not a spec of .*"
                                        r"valid baselines: \['base'\]"):
        explanation_files(folder)
    (folder / "explain" / "nobase--longer.yaml").rename(folder / "explain" / "base--x.yaml")
    (folder / "explain" / "base--x.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: x"))
    with pytest.raises(SpecError, match=r"--only nothere: no such spec in .*valid: "
                                        r"\['base', 'base--x'\]"):
        run_study(folder, tmp_path / "runs", pm, only=["nothere"])


def test_a_run_of_an_earlier_version_of_a_spec_is_reported_stale(pm, one_spec_study,
                                                                  capsys):
    """Changing what a study spec computes after its run must not let the old numbers
    pass as the new spec's: the document marks the run stale, and rerunning it fails
    with exit 1."""
    spec, argv = one_spec_study
    assert cli.main(argv, pm=pm) == 0
    spec.write_text(spec.read_text().replace("bins: 8", "bins: 6"))
    assert cli.main(argv, pm=pm) == 1
    err = capsys.readouterr().err
    assert re.search(r"1 study spec\(s\) failed:\n  study_a: .* holds a run of another spec",
                     err), err
    text = (spec.parents[1] / "doc.md").read_text()
    assert re.search(r"status: stale \(computed by an earlier version of this spec; delete "
                     r"\S+study_a and run the study with --only a\)", text), text
    assert "label MI is positive" not in text


def test_a_claims_only_change_reuses_the_finished_run(pm, one_spec_study, capsys):
    """Claims are evaluated on the tables: rewording or adding one must not recompute a
    finished run (nor report it stale)."""
    spec, argv = one_spec_study
    assert cli.main(argv, pm=pm) == 0
    spec.write_text(spec.read_text().replace("label MI is positive", "label MI is >= 0")
                    + "description: reworded\n")
    capsys.readouterr()
    assert cli.main(argv, pm=pm) == 0
    assert "computed the same tables (only the claims or the description changed)" in \
        capsys.readouterr().err
    runs = spec.parents[1] / "runs"
    assert len(json.loads((runs / "ledger.json").read_text())["study_a"]) == 1  # not rerun
    text = (spec.parents[1] / "doc.md").read_text()
    assert "| label MI is >= 0 | test_resnet |" in text and "reworded" in text


def test_a_failing_spec_does_not_stop_the_study(pm, tmp_path, monkeypatch, capsys):
    from conftest import TINY_SPEC

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "a_missing.yaml").write_text(
        TINY_SPEC.replace("name: tiny", "name: study_missing").replace(
            "data: {kind: synthetic, n_classes: 3, n_train: 48, n_val: 60, image_size: 16, "
            "noise: 0.5}", "data: {kind: imagefolder, root: nowhere/imagenette, image_size: 16}"))
    (folder / "b_good.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_good")
                                        + EXPLAINED)
    argv = ["study", str(folder), "--out", str(tmp_path / "runs"), "--doc",
            str(tmp_path / "doc.md"), "--readme", str(tmp_path / "none.md")]
    assert cli.main(argv, pm=pm) == 1
    err = capsys.readouterr().err
    assert re.search(r"1 study spec\(s\) failed:\n  study_missing: .*nowhere/imagenette", err), err
    ledger = json.loads((tmp_path / "runs" / "ledger.json").read_text())
    assert ledger["study_missing"][0]["status"].startswith("failed: ")
    assert ledger["study_good"][0]["status"] == "complete"
    assert "| label MI is negative | test_resnet |" in (tmp_path / "doc.md").read_text()


def test_duplicate_names_and_smoke_runs_never_touch_the_real_document(pm, tmp_path,
                                                                      monkeypatch):
    from conftest import TINY_SPEC

    from mi_probe.errors import SpecError
    from mi_probe._core.study import run_study

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MI_PROBE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "study"
    (folder / "explain").mkdir(parents=True)
    (folder / "a.yaml").write_text(TINY_SPEC.replace("name: tiny", "name: study_a") + EXPLAINED)
    (folder / "explain" / "a--same.yaml").write_text(TINY_SPEC.replace("name: tiny",
                                                                       "name: study_a"))
    with pytest.raises(SpecError, match=r"a.yaml and .*a--same.yaml both have name 'study_a'"):
        run_study(folder, tmp_path / "runs", pm)
    (folder / "explain" / "a--same.yaml").unlink()
    readme = tmp_path / "README.md"
    readme.write_text("<!-- study:begin -->\nkept\n<!-- study:end -->\n")
    assert cli.main(["study", str(folder), "--out", str(tmp_path / "runs"), "--profile",
                     "tiny"], pm=pm) == 0
    assert "kept" in readme.read_text() and not (tmp_path / "docs").exists()
    text = (tmp_path / "runs" / "reproduction.md").read_text()
    assert "| label MI is negative | test_resnet |" in text and "stale" not in text


def test_seeds_without_a_value_are_named_not_dropped():
    """A seed where one side never reached a value (epochs_to_target: null) would bias a
    comparison if it vanished silently; the reason names it."""
    table = {"hsic_compare": pl.DataFrame({
        "seed": [0, 0, 1, 1, 2, 2], "regularizer": ["none", "hsic"] * 3,
        "epochs_to_target": [5, 3, 6, 4, 7, None]})}
    check = CompareCheck(name="sooner", table="hsic_compare", value="epochs_to_target",
                         by="regularizer", greater="none", lesser="hsic")
    result = verdict(check, table)
    assert result.n == 2 and result.excluded == (2,)
    assert result.reason.endswith("seed(s) [2] have rows but no value (e.g. one side missing) "
                                  "and are left out")


def test_known_differences_bear_on_the_claims_they_can_explain():
    from pathlib import Path

    from mi_probe._core.claims import ClaimResult
    from mi_probe._core.study import SpecRecord, known_differences

    def record(arch):
        r = SpecRecord(Path("x.yaml"), "x", "", Path("runs/x"), status="complete")
        r.setting = {"arch": arch, "image_size": 64, "epochs": 12, "plateau": 3,
                     "early_stop": 6, "n_train": 2200, "n_eval": 1000, "n_seeds": 3,
                     "crop_scale": [0.35, 1.0], "bins": 20, "classes": 10,
                     "estimator": "histogram", "mass": "raw", "n_selection": 330,
                     "sites": "kinds pre_add, post_add"}
        return r

    r18, vgg = record("resnet18"), record("vgg11")
    paper = ("vgg16", "resnet18", "resnet50")
    differences = known_differences([r18, vgg], paper)
    text = {d.name: d.text for d in differences}
    assert "2x2 maps" in text["image size"] and "12 epochs" in text["epochs"]
    assert "2,200 training / 1,000 evaluation" in text["data size"]
    assert "vgg11 stands in for the VGG-16" in text["architecture"]
    other = {d.name: d.text for d in known_differences([record("test_resnet")], paper)}
    assert other["architecture"].endswith("ResNet-50; test_resnet is not one of them")
    # (B-1)(K-1)/2N = 19 * 9 / 2000
    assert f"= {19 * 9 / 2000:.3g} nats (B = 20, K = 10, N = 1,000)" in text["bias correction"]

    def bearing(rec, table, verdict=FAILS):
        claim = ClaimResult("c", "compare", table, verdict, "")
        return {d.name for d in differences if d.applies(rec, claim)}

    common = {"image size", "epochs", "data size", "augmentation", "image roles"}
    assert bearing(r18, "knockout") == common | {"masses"}
    assert bearing(r18, "knockout", INCONCLUSIVE) == common | {"masses", "seeds"}
    assert bearing(r18, "concentration") == common | {"bias correction", "masses"}
    assert bearing(r18, "dynamics_summary") == common | {"bias correction", "layer reduction"}
    assert bearing(vgg, "layer_mi") == common | {"architecture", "bias correction",
                                                 "layer reduction"}
    # a ResNet run without pre_add sites departs from the paper's sites
    post_only = record("resnet18")
    post_only.path, post_only.setting["sites"] = Path("pairs.yaml"), "kinds stem, post_add"
    differences = known_differences([r18, post_only], paper)
    sites = next(d for d in differences if d.name == "sites")
    assert "post_add only (no pre_add) in pairs, for cost" in sites.text
    assert bearing(post_only, "layer_pairs") >= {"sites"} and "sites" not in bearing(r18, "x")


STUDY = __import__("pathlib").Path(__file__).resolve().parents[1] / "specs" / "study"


def _study_specs():
    import yaml

    from mi_probe._core.study import explanation_files, spec_files

    paths = spec_files(STUDY) + [p for p, _ in explanation_files(STUDY)]
    return {p.stem: yaml.safe_load(p.read_text()) for p in paths}


def test_the_headline_claims_are_stated_by_the_study_specs():
    """The README's three central claims are looked up by name prefix in the manifest:
    renaming a check must not silently drop one."""
    from mi_probe._core.study import load_manifest

    specs = {k: v for k, v in _study_specs().items() if "--" not in k}
    headline = load_manifest(STUDY).headline
    assert len(headline) == 3
    for prefix in headline:
        stating = [s for s in specs.values()
                   if any(c["name"].startswith(prefix) for c in s["checks"])]
        assert stating, prefix
        # every architecture that runs the claim's experiment states it (same words)
        kinds = {s["experiment"]["kind"] for s in stating}
        running = {s["model"]["arch"] for s in specs.values() if s["experiment"]["kind"] in kinds
                   and s["experiment"].get("mass", "raw") == "raw"}
        assert running == {s["model"]["arch"] for s in stating}, prefix


def test_no_analysis_image_chooses_a_checkpoint_in_the_study():
    """Issue 21: three disjoint roles. Every study spec that trains holds back part of
    train/ to choose the checkpoint (the data source then never selects on val/, the
    analysis images: tests/test_data.py and tests/test_train.py)."""
    for stem, spec in _study_specs().items():
        if spec["model"].get("weights", "train") == "train":
            assert spec["data"].get("selection_fraction", 0) > 0, stem
            assert spec["data"].get("val_dir", "val") == "val", stem


def test_every_study_claim_has_a_role_and_the_papers_quote_its_sentence():
    for stem, spec in _study_specs().items():
        for check in spec["checks"]:
            assert check.get("role") in ("paper", "ours", "sanity"), (stem, check["name"])
            if check["role"] == "paper":
                assert check.get("paper"), (stem, check["name"])
            if check["role"] == "ours":
                assert "(ours" in check["name"], (stem, check["name"])
            if check["role"] == "sanity":
                assert "sanity check" in check["name"], (stem, check["name"])


def test_the_coverage_table_names_real_specs_and_claims():
    from mi_probe._core.study import load_manifest

    specs = _study_specs()
    for row in load_manifest(STUDY).coverage:
        assert row.specs or row.untested, row.item
        for stem in row.specs:
            names = [c["name"] for c in specs[stem]["checks"]]
            assert any(n.startswith(p) for n in names for p in row.prefixes), (row.item, stem)


def test_study_explanation_specs_name_their_baseline_and_restate_its_claims():
    from pathlib import Path

    import yaml

    from mi_probe._core.study import explanation_files

    folder = Path(__file__).resolve().parents[1] / "specs" / "study"
    pairs = explanation_files(folder)
    assert pairs
    for path, baseline in pairs:
        spec, base = (yaml.safe_load(p.read_text()) for p in (path, baseline))
        assert spec["description"] and spec["experiment"] == base["experiment"]
        base_claims = {c["name"] for c in base["checks"]}
        assert base_claims & {c["name"] for c in spec["checks"]}, path


def test_the_move_of_an_explanation_is_read_against_the_claims_direction():
    from mi_probe._core.claims import ClaimResult
    from mi_probe._core.study import _moved

    def at(mean):
        return ClaimResult("c", "k", "t", INCONCLUSIVE, "", mean=mean, n=1)

    rises = TrendCheck(name="r", table="t", value="v")
    falls = TrendCheck(name="f", table="t", value="v", direction="decreasing")
    assert _moved(compare(), at(0.3), at(0.1)) == "+0.2 (towards the claim)"
    assert _moved(compare(), at(-0.2), at(0.1)) == "-0.3 (away from the claim)"
    assert _moved(rises, at(0.5), at(0.25)) == "+0.25 (towards the claim)"
    assert _moved(falls, at(0.5), at(0.25)) == "+0.25 (away from the claim)"
    below = BoundCheck(name="b", table="t", value="v", max=0.0)
    assert _moved(below, at(-0.5), at(-0.25)) == "-0.25 (towards the claim)"
    within = BoundCheck(name="w", table="t", value="v", min=0.0, max=1.0)
    assert _moved(within, at(0.5), at(0.25)) == "+0.25"
    assert _moved(compare(), at(0.1), None) == "–" and _moved(compare(), at(0.1), at(0.1)) \
        == "+0 (unchanged)"
