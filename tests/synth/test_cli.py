"""``gbmmet synth`` from the command line: bad input writes nothing; re-runs resume."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.synth import COHORT_FILE


def _tree(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "huge"], "'preset' parameter must be one of"),
        (["--difficulty", "1.5"], "'difficulty' parameter of synth must be a number in [0, 1]"),
        (["--difficulty", "-0.1"], "'difficulty' parameter of synth must be a number in [0, 1]"),
        (["--seed", "-3"], "'seed' parameter must be a whole number >= 0"),
        (["--workers", "-1"], "'workers' parameter must be >= 0"),
    ],
)
def test_impossible_parameters_fail_clearly_and_write_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "cohort"
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_non_empty_folder_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "cohort"
    out.mkdir()
    (out / "notes.txt").write_text("a user's file")
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0"])
    assert code == 2
    assert "is not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    # --overwrite never deletes a folder gbmmet did not make
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", "--overwrite"])
    assert code == 2
    assert "refusing to delete" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "a user's file"


def test_rerun_resumes_and_other_settings_need_overwrite(tiny_cohort, tmp_path, capsys):
    out = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, out)
    before = _tree(out)
    # an interrupted run: one patient never finished, another left a temporary folder
    shutil.rmtree(out / "siteA" / "images" / "A0003")
    (out / "siteB" / "images" / ".B0002.tmp").mkdir()
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", "--truth"])
    assert code == 0
    assert "1 written, 19 reused" in capsys.readouterr().out
    assert not (out / "siteB" / "images" / ".B0002.tmp").exists()
    assert _tree(out) == before
    # other settings into the same folder: refused, then replaced with --overwrite
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", "--seed", "5"])
    assert code == 2
    assert "other settings" in capsys.readouterr().err
    code = main(["synth", "--preset", "tiny", "--out", str(out), "--workers", "0", "--seed", "5",
                 "--overwrite", "--preview"])
    assert code == 0
    assert (out / "preview.png").stat().st_size > 10_000
    assert '"seed": 5' in (out / COHORT_FILE).read_text()


def test_help_imports_no_heavy_library():
    code = (
        "import sys, pipelines.cli as c\n"
        "heavy = [m for m in ('ray', 'torch', 'SimpleITK', 'numpy', 'scipy') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert out.stdout.strip() == ""
    help_out = subprocess.run([sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, encoding="utf-8",
                              text=True, check=True)
    assert "synth" in help_out.stdout
