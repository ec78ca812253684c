"""Faults of the lake itself: its root, its write permission and its pseudonym key.

Each test builds a small real lake in ``tmp_path`` and checks the error, its message and that the
lake holds the same files afterwards. Read-only cases run in a child process that file permissions
bind even as root (``run_without_write_override``).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

from gbmmet import constants as C
from gbmmet.errors import LakeError
from gbmmet.pseudonym import pseudonymise
from storage.lake import KEY_BYTES, SECRET_DIR, SECRET_FILE, Lake
from storage.schemas import SCHEMAS

REPO = Path(__file__).resolve().parents[2]


# -- helpers (also used by test_query.py) -----------------------------------------------------
def patient_row(pid: str, site: str = "siteA", split: str = C.TRAIN) -> dict:
    return {C.COL_PATIENT_ID: pid, C.COL_SITE: site, C.COL_SPLIT: split, C.COL_LABEL: C.GBM, C.COL_AGE: 61,
            C.COL_SEX: "F", C.COL_LOCATION: C.SUPRA, C.COL_PRIMARY: "", "n_slices": 2, "input_hash": "i",
            "params_hash": "p", "preprocessed_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def run_row(pid: str, status: str = "ok") -> dict:
    """A preprocessing attempt: every column of the schema, the ones unused here null."""
    row = dict.fromkeys(SCHEMAS[C.TABLE_PREPROCESS_RUNS].names)
    return row | {C.COL_PATIENT_ID: pid, C.COL_SITE: "siteA", "attempt_id": "a1", "status": status,
                  "started_at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC)}


def small_lake(root: Path) -> tuple[Lake, str]:
    """A lake with its key, one pseudonymised patient and its preprocessing record; (lake, id)."""
    lake = Lake(root).ensure()
    pid = pseudonymise(lake.secret(), "siteA", "A0001")
    lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row(pid)]))
    lake.append(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist([run_row(pid)]))
    return lake, pid


def listing(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file and folder under ``root`` (hidden ones too): size, mtime and, for files, bytes."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns, p.read_bytes() if p.is_file() else b"")
    return out


def make_read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)


def make_writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)


def _drop_write_override() -> None:
    """In the child before exec: drop the capabilities that let root ignore file permissions
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER) from the bounding set, so the new program
    never holds them. A no-op for other users, who never had them."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2, 3):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            os._exit(77)


def run_without_write_override(code: str) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a child bound by file permissions (chmod -w holds even as root).

    The code prints what the test checks; a child that can still write where it must not exits
    77, and the test is skipped (a system where the capability cannot be dropped).
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, encoding="utf-8",
                          preexec_fn=_drop_write_override, timeout=120)
    if proc.returncode == 77:
        pytest.skip("cannot run a child that file permissions bind on this system")
    return proc


def refuse_if_writable(root: Path) -> str:
    """Child code that exits 77 (skip) if it can still create a file in ``root``."""
    return f"""
    import os, sys
    try:
        open(os.path.join({str(root)!r}, ".w"), "wb").close()
    except OSError:
        pass
    else:
        os.unlink(os.path.join({str(root)!r}, ".w"))
        sys.exit(77)
"""


# -- the key ----------------------------------------------------------------------------------
def test_a_new_empty_lake_creates_its_key(tmp_path):
    lake = Lake(tmp_path / "lake")
    key = lake.secret()
    path = tmp_path / "lake" / SECRET_DIR / SECRET_FILE
    assert len(key) == KEY_BYTES and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in path.parent.iterdir()] == [SECRET_FILE]  # no temporary left


def test_a_lake_copied_without_its_key_is_refused_and_no_key_is_made(tmp_path):
    lake, _ = small_lake(tmp_path / "lake")
    (tmp_path / "lake" / SECRET_DIR / SECRET_FILE).unlink()
    before = listing(tmp_path / "lake")
    with pytest.raises(LakeError, match="holds patients but no pseudonym key") as err:
        Lake(tmp_path / "lake").secret()
    msg = str(err.value)
    assert str(tmp_path / "lake") in msg and f"copy {SECRET_DIR}/{SECRET_FILE}" in msg and "never recreated" in msg
    assert listing(tmp_path / "lake") == before


def test_a_lake_with_only_preprocessing_records_needs_its_key_too(tmp_path):
    lake = Lake(tmp_path / "lake").ensure()
    lake.append(C.TABLE_PREPROCESS_RUNS, pa.Table.from_pylist([run_row("p0123456789abcdef", "failed")]))
    with pytest.raises(LakeError, match="no pseudonym key"):
        lake.secret()
    assert not (tmp_path / "lake" / SECRET_DIR).exists()


def test_a_truncated_key_is_refused_and_left_as_it_is(tmp_path):
    small_lake(tmp_path / "lake")
    key = tmp_path / "lake" / SECRET_DIR / SECRET_FILE
    key.write_bytes(key.read_bytes()[:7])
    before = listing(tmp_path / "lake")
    with pytest.raises(LakeError, match=r"is damaged \(7 bytes, not 32\)") as err:
        Lake(tmp_path / "lake").secret()
    assert str(key) in str(err.value) and "copy" in str(err.value)
    assert listing(tmp_path / "lake") == before


def test_a_key_that_is_a_folder_is_refused(tmp_path):
    lake = Lake(tmp_path / "lake")
    (tmp_path / "lake" / SECRET_DIR / SECRET_FILE).mkdir(parents=True)
    with pytest.raises(LakeError, match="is not a file"):
        lake.secret()


def test_an_unreadable_key_is_refused(tmp_path):
    small_lake(tmp_path / "lake")
    key = tmp_path / "lake" / SECRET_DIR / SECRET_FILE
    before = listing(tmp_path / "lake")
    key.chmod(0o000)
    proc = run_without_write_override(f"""
        import sys
        try:
            open({str(key)!r}, "rb").close()
        except OSError:
            pass
        else:
            sys.exit(77)
        from gbmmet.errors import LakeError
        from storage.lake import Lake
        try:
            Lake({str(tmp_path / "lake")!r}).secret()
        except LakeError as exc:
            print("LakeError:", exc)
    """)
    key.chmod(0o600)
    assert proc.returncode == 0, proc.stderr
    assert "LakeError: the lake's pseudonym key" in proc.stdout and "cannot be read" in proc.stdout
    assert str(key) in proc.stdout
    assert listing(tmp_path / "lake") == before


# -- the root ---------------------------------------------------------------------------------
def test_a_lake_that_is_a_file_is_refused_when_used(tmp_path):
    path = tmp_path / "lake.parquet"
    path.write_bytes(b"not a lake")
    lake = Lake(path)
    for use in (lake.ensure, lake.secret, lambda: lake.read(C.TABLE_PATIENTS),
                lambda: lake.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row("p1")]))):
        with pytest.raises(LakeError, match="is a file, not a folder") as err:
            use()
        assert str(path) in str(err.value)
    assert path.read_bytes() == b"not a lake"


def test_check_writable_refuses_a_file(tmp_path):
    path = tmp_path / "lake"
    path.write_bytes(b"x")
    with pytest.raises(LakeError, match="is a file") as err:
        Lake(path).check_writable()
    assert str(path) in str(err.value)
    assert path.read_bytes() == b"x"


def test_check_writable_creates_a_new_lake_with_its_key_and_leaves_no_probe(tmp_path):
    lake = Lake(tmp_path / "new" / "lake")
    assert lake.check_writable() is lake
    assert sorted(p.name for p in (tmp_path / "new" / "lake").iterdir()) == [SECRET_DIR]
    assert len(lake.secret()) == KEY_BYTES


def test_check_writable_keeps_an_existing_lake_as_it_is(tmp_path):
    small_lake(tmp_path / "lake")
    before = listing(tmp_path / "lake")
    Lake(tmp_path / "lake").check_writable()
    assert listing(tmp_path / "lake") == before


def test_check_writable_refuses_a_lake_without_its_key(tmp_path):
    small_lake(tmp_path / "lake")
    (tmp_path / "lake" / SECRET_DIR / SECRET_FILE).unlink()
    with pytest.raises(LakeError, match="no pseudonym key"):
        Lake(tmp_path / "lake").check_writable()
    assert not (tmp_path / "lake" / SECRET_DIR / SECRET_FILE).exists()


def test_check_writable_refuses_a_read_only_lake_before_any_work(tmp_path):
    root = tmp_path / "lake"
    small_lake(root)
    before = listing(root)
    make_read_only(root)
    try:
        proc = run_without_write_override(refuse_if_writable(root) + f"""
    from gbmmet.errors import LakeError
    from storage.lake import Lake
    try:
        Lake({str(root)!r}).check_writable()
    except LakeError as exc:
        print("LakeError:", exc)
    """)
    finally:
        make_writable(root)
    assert proc.returncode == 0, proc.stderr
    assert f"LakeError: the lake {root} is not writable" in proc.stdout and "make it writable" in proc.stdout
    assert listing(root) == before


def test_check_writable_on_object_storage(s3_server):
    from tests.conftest import s3_uri

    lake = Lake(s3_uri(s3_server, "faults-lake", "new"))
    key = lake.check_writable().secret()
    assert len(key) == KEY_BYTES and Lake(lake.uri).secret() == key
    names = [p.rsplit("/", 1)[-1] for p in _object_names(lake)]
    assert names == [SECRET_FILE]  # the probe is gone

    copied = Lake(s3_uri(s3_server, "faults-lake", "copied"))
    copied.append(C.TABLE_PATIENTS, pa.Table.from_pylist([patient_row("p1")]))
    before = _object_names(copied)
    with pytest.raises(LakeError, match="no pseudonym key"):
        copied.check_writable()
    assert _object_names(copied) == before  # no key, no probe: only the table's files
    assert not any(p.endswith(SECRET_FILE) for p in before)


def _object_names(lake: Lake) -> list[str]:
    import pyarrow.fs as pafs

    infos = lake.fs.get_file_info(pafs.FileSelector(lake.base, recursive=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File)
