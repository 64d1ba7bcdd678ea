"""The command never replaces a file it did not write, and checks a result before writing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import jaxsweep
from jaxsweep import cli

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "result_v0.1.0.json")


@pytest.fixture
def folder(tmp_path):
    shutil.copy(DATA, tmp_path / "result.json")
    return tmp_path


def test_a_report_of_ones_own_is_never_replaced_without_overwrite(folder, capsys):
    mine = "# My notes on this run\n\nkeep me\n"
    (folder / "report.md").write_text(mine)
    assert cli.main(["report", str(folder)]) == 2
    error = capsys.readouterr().err
    assert "report.md exist and were not written by jaxsweep" in error and "--overwrite" in error
    assert (folder / "report.md").read_text() == mine
    assert not (folder / "figures").exists()  # refused before anything was written
    assert cli.main(["report", str(folder), "--overwrite"]) == 0
    assert (folder / "report.md").read_text().startswith("# jaxsweep report")


def test_jaxsweeps_own_outputs_are_replaced_and_foreign_figures_kept(folder, capsys):
    assert cli.main(["report", str(folder)]) == 0
    assert cli.main(["report", str(folder)]) == 0  # its own files: replaced, no flag needed
    figure = folder / "figures" / "lr_curve.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n drawn by something else")
    assert cli.main(["report", str(folder)]) == 2
    assert "figures/lr_curve.png" in capsys.readouterr().err
    assert figure.read_bytes().endswith(b"drawn by something else")


def test_a_result_that_cannot_be_reported_touches_nothing(folder, capsys):
    assert cli.main(["report", str(folder)]) == 0
    before = {p: os.path.getmtime(p) for p in folder.rglob("*") if p.is_file()}
    record = json.loads((folder / "result.json").read_text())
    record["evaluations"] = []  # loads, but holds nothing to report
    (folder / "result.json").write_text(json.dumps(record))
    assert cli.main(["report", str(folder)]) == 2
    after = {p: os.path.getmtime(p) for p in folder.rglob("*") if p.is_file()}
    assert {p: t for p, t in after.items() if p.name != "result.json"} == {
        p: t for p, t in before.items() if p.name != "result.json"
    }


def test_a_sweep_is_refused_before_it_trains(tmp_path, monkeypatch, capsys):
    (tmp_path / "methods.tex").write_text("\\section{Methods}\nmy own text\n")
    monkeypatch.setattr(jaxsweep, "run", lambda *a, **k: pytest.fail("trained"))
    assert cli.main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "methods.tex exist and were not written by jaxsweep" in capsys.readouterr().err


def test_hostile_strings_of_a_result_file_never_reach_tex_or_markdown(folder):
    from jaxsweep.report import markdown, methods_tex

    record = json.loads((folder / "result.json").read_text())
    record["config"]["hyperparam"] = "\\immediate\\write18{rm -rf ~}"
    record["config"]["model"] = "<script>alert(1)</script>`x`"
    record["config"]["optimizer"] = "adam | <img src=x onerror=alert(1)>"
    record["environment"]["backend"] = "<iframe src=x>"
    (folder / "result.json").write_text(json.dumps(record))
    result = jaxsweep.load(folder / "result.json")
    tex, text = methods_tex(result), markdown(result)
    assert "\\immediate" not in tex and "\\write18" not in tex and "{rm" not in tex
    assert "<script>" not in text and "<img" not in text and "write18{" not in text
    assert "<iframe" not in text
    assert "&lt;script&gt;" in text  # shown, as text
    # a real name is untouched
    plain = jaxsweep.load(DATA)
    assert "learning rate" in markdown(plain)
