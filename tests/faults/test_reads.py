"""Reads faults (issue 19): bad reads files and reads that conflict with the lake's are refused
with the file, the line and what to do, and nothing is written; ``replace`` keeps the new read."""

from __future__ import annotations

import pyarrow as pa
import pytest

from gbmmet import constants as C
from gbmmet.pseudonym import pseudonymise
from pipelines.cli import EXIT_USAGE, main
from pipelines.readers import ReadsError, import_reads, import_source
from storage.lake import Lake
from storage.schemas import SCHEMAS

SITE = "siteA"
PATIENTS = ("P1", "P2", "Jörg")
HEADER = "reader_id,patient_id,assisted,call,confidence\n"


@pytest.fixture
def lake(tmp_path) -> Lake:
    """A lake holding only its key and three patients of one site."""
    lake = Lake(tmp_path / "lake")
    key = lake.secret()
    rows = [{C.COL_PATIENT_ID: pseudonymise(key, SITE, p), C.COL_SITE: SITE, C.COL_SPLIT: C.TEST,
             C.COL_LABEL: C.GBM} for p in PATIENTS]
    lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist(rows, schema=SCHEMAS[C.TABLE_PATIENTS]))
    return lake


def _csv(tmp_path, name, content: str | bytes):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _reads(lake) -> list[tuple]:
    """The lake's reads as (reader, patient pseudonym, assisted, call, confidence, source), sorted."""
    cols = [C.COL_READER_ID, C.COL_PATIENT_ID, C.COL_ASSISTED, C.COL_CALL, C.COL_CONFIDENCE, C.COL_READ_SOURCE]
    return sorted(tuple(r[c] for c in cols) for r in lake.read(C.TABLE_READS).to_pylist())


def _src(tmp_path, name) -> str:
    """The source of the reads imported from ``tmp_path / name``."""
    return import_source(tmp_path / name)


def _pid(lake, raw):
    return pseudonymise(lake.secret(), SITE, raw)


def _refused(lake, path) -> str:
    before = _reads(lake)
    with pytest.raises(ReadsError) as err:
        import_reads(path, str(lake.uri))
    msg = str(err.value)
    assert str(path) in msg and "nothing was imported" in msg
    assert _reads(lake) == before  # nothing written
    return msg


V1 = HEADER + "r1,P1,false,GBM,4\nr1,P2,false,MET,3\nr2,P1,false,GBM,5\n"
V2 = HEADER + "r1,P1,false,MET,2\nr1,P2,false,MET,3\n"  # P1 corrected, P2 unchanged


# -- the file itself ---------------------------------------------------------------------------
def test_an_unnamed_extra_field_is_refused_not_dropped(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", HEADER + "r1,P1,false,GBM,4\nr1,P2,false,MET,3,oops\n"))
    assert "r.csv line 3: 6 field(s) but the header (line 1) has 5" in msg and "quote values" in msg


def test_a_row_with_too_few_fields_is_refused(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", HEADER + "r1,P1,false\n"))
    assert "line 2: 3 field(s) but the header (line 1) has 5" in msg


def test_unknown_columns_are_refused(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", "reader_id,patient_id,assisted,call,confidance\nr1,P1,false,GBM,4\n"))
    assert "line 1: unknown column(s) ['confidance']" in msg and "rename or remove them" in msg


def test_a_latin1_reads_file_names_the_line(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", (HEADER + "r1,P1,false,GBM,4\nr1,Jörg,false,MET,3\n").encode("latin-1")))
    assert "line 3: not UTF-8" in msg and "save it as UTF-8" in msg


def test_a_utf16_reads_file_is_refused(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", (HEADER + "r1,P1,false,GBM,4\n").encode("utf-16")))
    assert "the file is UTF-16" in msg


def test_a_utf8_reads_file_with_byte_order_mark_and_accents_imports(tmp_path, lake):
    s = import_reads(_csv(tmp_path, "r.csv", "\ufeff" + HEADER + "r1,Jörg,false,GBM,4\n"), str(lake.uri))
    assert s.rows == 1 and _reads(lake) == [("r1", _pid(lake, "Jörg"), False, "GBM", 4, _src(tmp_path, "r.csv"))]


def test_a_header_without_reads_is_refused(tmp_path, lake):
    assert "no reads (only a header)" in _refused(lake, _csv(tmp_path, "r.csv", HEADER))


def test_every_problem_is_listed_at_once(tmp_path, lake):
    msg = _refused(lake, _csv(tmp_path, "r.csv", HEADER + "r1,P1,false,GBM,4,x\nr1,NOPE,false,GBM,4\nr1,P2,maybe,MET,3\n"))
    assert "3 problem(s)" in msg and "line 2: 6 field(s)" in msg
    assert "line 3: unknown patient 'NOPE'" in msg and "line 4: assisted must be true or false" in msg


# -- reads already in the lake ------------------------------------------------------------------
def test_reimporting_the_same_file_replaces_its_rows(tmp_path, lake):
    path = _csv(tmp_path, "v1.csv", V1)
    import_reads(path, str(lake.uri))
    path.write_text(V2)  # same file, edited: no conflict, its old rows go
    s = import_reads(path, str(lake.uri))
    assert s.rows == 2 and not s.replaced and not s.skipped
    assert [r[:5] for r in _reads(lake)] == sorted([("r1", _pid(lake, "P1"), False, "MET", 2),
                                                    ("r1", _pid(lake, "P2"), False, "MET", 3)])


def test_a_corrected_file_under_a_new_name_is_refused_listing_the_conflicts(tmp_path, lake):
    import_reads(_csv(tmp_path, "v1.csv", V1), str(lake.uri))
    msg = _refused(lake, _csv(tmp_path, "v2.csv", V2))
    assert "1 problem(s)" in msg  # P2's identical read is no conflict
    assert ("v2.csv line 2: reader r1, patient 'P1', unassisted: MET (confidence 2) here, GBM (confidence 4) "
            "in the import of 'v1.csv'") in msg
    assert "--replace" in msg and _pid(lake, "P1") not in msg  # never the pseudonym


def test_replace_removes_the_older_conflicting_and_identical_reads_in_one_commit(tmp_path, lake):
    import_reads(_csv(tmp_path, "v1.csv", V1), str(lake.uri))
    before = lake.version(C.TABLE_READS)
    s = import_reads(_csv(tmp_path, "v2.csv", V2), str(lake.uri), replace=True)
    assert s.rows == 2 and [(c.line, c.patient, c.old_call, c.new_call) for c in s.replaced] == [
        (2, "P1", "GBM", "MET"), (3, "P2", "MET", "MET")]
    assert _reads(lake) == sorted([
        ("r1", _pid(lake, "P1"), False, "MET", 2, _src(tmp_path, "v2.csv")),
        ("r1", _pid(lake, "P2"), False, "MET", 3, _src(tmp_path, "v2.csv")),
        ("r2", _pid(lake, "P1"), False, "GBM", 5, _src(tmp_path, "v1.csv")),  # untouched
    ])
    assert lake.version(C.TABLE_READS) == before + 1


def test_identical_reads_from_another_file_are_skipped_and_listed(tmp_path, lake):
    import_reads(_csv(tmp_path, "v1.csv", V1), str(lake.uri))
    s = import_reads(_csv(tmp_path, "extra.csv", HEADER + "r1,P2,false,MET,3\nr3,P2,false,GBM,1\n"), str(lake.uri))
    assert s.rows == 1 and s.readers == ["r3"]
    assert [(c.line, c.patient, c.old_source) for c in s.skipped] == [(2, "P2", _src(tmp_path, "v1.csv"))]
    assert len(_reads(lake)) == 4  # the three of v1 and r3's


def test_a_copy_of_an_imported_file_stores_nothing_twice(tmp_path, lake):
    import_reads(_csv(tmp_path, "v1.csv", V1), str(lake.uri))
    before = lake.version(C.TABLE_READS), _reads(lake)
    s = import_reads(_csv(tmp_path, "copy.csv", V1), str(lake.uri))
    assert s.rows == 0 and len(s.skipped) == 3
    assert (lake.version(C.TABLE_READS), _reads(lake)) == before  # not even a commit


def test_files_of_the_same_name_in_two_folders_keep_their_own_reads(tmp_path, lake):
    (tmp_path / "siteA").mkdir()
    (tmp_path / "siteB").mkdir()
    a = import_reads(_csv(tmp_path / "siteA", "reads.csv", HEADER + "r1,P1,false,GBM,4\n"), str(lake.uri))
    b = import_reads(_csv(tmp_path / "siteB", "reads.csv", HEADER + "r1,P2,false,MET,3\n"), str(lake.uri))
    assert a.source != b.source and len(_reads(lake)) == 2


def test_an_imported_assisted_read_conflicts_with_a_simulated_one(tmp_path, lake):
    sim = [{C.COL_READER_ID: "r1", C.COL_PATIENT_ID: _pid(lake, "P1"), C.COL_ASSISTED: True, C.COL_CALL: "GBM",
            C.COL_CONFIDENCE: 4, C.COL_READ_SOURCE: C.READ_SOURCE_SIMULATED + "run7"}]
    lake.append(C.TABLE_READS, pa.Table.from_pylist(sim))
    path = _csv(tmp_path, "assisted.csv", HEADER + "r1,P1,true,GBM,4\n")  # even an equal call
    msg = _refused(lake, path)
    assert "line 2: reader r1, patient 'P1', assisted" in msg and "simulated for run 'run7'" in msg
    s = import_reads(path, str(lake.uri), replace=True)
    assert [c.old_source for c in s.replaced] == [C.READ_SOURCE_SIMULATED + "run7"]
    assert _reads(lake) == [("r1", _pid(lake, "P1"), True, "GBM", 4, _src(tmp_path, "assisted.csv"))]


def test_cli_refuses_a_conflict_with_exit_code_2_and_replace_fixes_it(tmp_path, lake, capsys):
    import_reads(_csv(tmp_path, "v1.csv", V1), str(lake.uri))
    v2 = _csv(tmp_path, "v2.csv", V2)
    assert main(["readers", "import", str(v2), "--lake", str(lake.uri)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "v2.csv line 2: reader r1, patient 'P1'" in err and "--replace" in err and "Traceback" not in err
    assert main(["readers", "import", str(v2), "--lake", str(lake.uri), "--replace"]) == 0
    out = capsys.readouterr().out
    assert "2 reads by r1 imported" in out and "2 older read(s) replaced" in out and "v2.csv line 2" in out


def test_cli_reports_a_non_utf8_file_without_traceback(tmp_path, lake, capsys):
    bad = _csv(tmp_path, "r.csv", (HEADER + "r1,Jörg,false,GBM,4\n").encode("cp1252"))
    assert main(["readers", "import", str(bad), "--lake", str(lake.uri)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{bad} line 2: not UTF-8" in err and "Traceback" not in err
    assert lake.version(C.TABLE_READS) is None  # nothing committed
