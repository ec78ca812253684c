"""Manifest faults (issue 19): every bad input ends in one ManifestError naming the file, the line
and what to do; nothing else escapes (no raw traceback) and nothing passes silently."""

from __future__ import annotations

import codecs

import pytest

from gbmmet.errors import ManifestError
from gbmmet.manifest import load_manifests

HEADER = "patient_id,site,split,label,age,sex,location,primary_tumor,t1c_path,t2_path,roi_path\n"


def _row(pid, age="60", primary=""):
    return f"{pid},siteA,train,GBM,{age},M,supra,{primary},t1.nii.gz,t2.nii.gz,roi.nii.gz\n"


def _fails(tmp_path, content: bytes | str, name="m.csv") -> str:
    m = tmp_path / name
    m.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ManifestError) as err:
        load_manifests([m], allow_missing_files=True)
    msg = str(err.value)
    assert str(m) in msg and "nothing was run" in msg
    return msg


def test_an_unquoted_comma_makes_a_row_too_long(tmp_path):
    msg = _fails(tmp_path, HEADER + _row("P1") + _row("P2", primary="lung, left") + _row("P3"))
    assert "line 3: 12 field(s) but the header (line 1) has 11" in msg
    assert "quote values that contain commas" in msg
    assert "1 problem(s)" in msg  # P1 and P3 are fine


def test_a_quoted_comma_is_fine(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(HEADER + _row("P1", primary='"lung, left"'))
    entries, _ = load_manifests([m], allow_missing_files=True)
    assert entries[0].primary_tumor == "lung, left"


def test_a_row_with_too_few_fields(tmp_path):
    msg = _fails(tmp_path, HEADER + "P1,siteA,train,GBM,60\n")
    assert "line 2: 5 field(s) but the header (line 1) has 11" in msg and "add the missing values" in msg


def test_latin1_manifest_names_the_line_and_asks_for_utf8(tmp_path):
    content = (HEADER + _row("P1") + _row("Müller")).encode("latin-1")
    msg = _fails(tmp_path, content)
    assert "line 3: not UTF-8 (byte 0xfc" in msg and "save it as UTF-8" in msg


def test_utf16_manifest_is_refused_with_a_hint(tmp_path):
    msg = _fails(tmp_path, (HEADER + _row("P1")).encode("utf-16"))
    assert "line 1: the file is UTF-16" in msg and "save it as UTF-8" in msg


def test_utf16_without_byte_order_mark_is_refused_too(tmp_path):
    msg = _fails(tmp_path, (HEADER + _row("P1")).encode("utf-16-le"))
    assert "line 1: NUL bytes (the file is probably UTF-16)" in msg


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    m = tmp_path / "m.csv"
    m.write_bytes(codecs.BOM_UTF8 + (HEADER + _row("Müller")).encode())
    entries, _ = load_manifests([m], allow_missing_files=True)
    assert [e.patient_id for e in entries] == ["Müller"]


def test_a_header_without_patients_is_refused(tmp_path):
    msg = _fails(tmp_path, HEADER)
    assert "no patients (only a header)" in msg and "add one row per patient" in msg


def test_an_empty_file_is_refused(tmp_path):
    msg = _fails(tmp_path, "\n\n")
    assert "the file is empty" in msg and "patient_id,site,split" in msg


@pytest.mark.parametrize(("age", "why"), [
    ("-5", "outside 0 to 120"),
    ("150", "outside 0 to 120"),
    ("62.5", "not a whole number"),
    ("nan", "not a whole number"),
    ("inf", "not a whole number"),
])
def test_impossible_ages_are_problems(tmp_path, age, why):
    msg = _fails(tmp_path, HEADER + _row("P1") + _row("P2", age=age))
    assert f"line 3 (patient P2): age {age!r} is {why}" in msg and "give whole years from 0 to 120" in msg


def test_plausible_ages_pass(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(HEADER + _row("P1", age="0") + _row("P2", age="120") + _row("P3", age="61.0") + _row("P4", age=""))
    entries, _ = load_manifests([m], allow_missing_files=True)
    assert [e.age for e in entries] == [0, 120, 61, None]


def test_a_value_under_an_unnamed_column_is_refused(tmp_path):
    msg = _fails(tmp_path, HEADER.rstrip("\n") + ",\n" + _row("P1").rstrip("\n") + ",\n"
                 + _row("P2").rstrip("\n") + ",oops\n")
    assert "line 3: value(s) under a column with no name in the header 'oops' (column 12)" in msg
    assert "1 problem(s)" in msg  # line 2's trailing comma carries nothing


def test_line_numbers_are_the_files_own(tmp_path):
    # a blank line and a quoted value over two lines: the problem is on line 5, not "row 3"
    msg = _fails(tmp_path, HEADER + _row("P1", primary='"lung\nleft"') + "\n" + _row("P2", age="-1"))
    assert "line 5 (patient P2): age '-1'" in msg


def test_every_problem_of_every_manifest_at_once(tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes((HEADER + _row("Zoë")).encode("cp1252"))
    b.write_text(HEADER + _row("P1", age="-3") + _row("P2", primary="a,b"))
    with pytest.raises(ManifestError) as err:
        load_manifests([a, b], allow_missing_files=True)
    msg = str(err.value)
    assert "3 problem(s)" in msg
    assert f"{a} line 2: not UTF-8" in msg and f"{b} line 2 (patient P1): age '-3'" in msg
    assert f"{b} line 3: 12 field(s)" in msg
