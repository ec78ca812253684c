"""Which read errors are retried (``gbmmet.errors.classify_os_error``): a transient errno is, any
other fails its patient at once."""

from __future__ import annotations

import errno
import pickle

import pytest

from gbmmet.errors import ImageFileError, TransientIOError, classify_os_error, transient_cause


@pytest.mark.parametrize("code", ["EIO", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "EBUSY", "ESTALE"])
def test_a_read_failing_with_a_transient_errno_is_retried(code):
    assert classify_os_error(OSError(getattr(errno, code), "x"))


@pytest.mark.parametrize("exc", [FileNotFoundError(errno.ENOENT, "x"), PermissionError(errno.EACCES, "x"),
                                 IsADirectoryError(errno.EISDIR, "x"), OSError("no errno"),
                                 ValueError("not an OSError")], ids=lambda e: type(e).__name__)
def test_any_other_error_fails_at_once(exc):
    assert not classify_os_error(exc)
    assert transient_cause(exc) is None


def test_a_transient_error_a_reader_wrapped_in_its_own_is_still_retried():
    try:
        try:
            raise OSError(errno.EIO, "Input/output error")
        except OSError as low:
            raise ImageFileError("patient P1: cannot read t2.nii.gz") from low
    except ImageFileError as exc:
        found = transient_cause(exc)
    assert isinstance(found, TransientIOError) and isinstance(found, OSError) and found.errno == errno.EIO


def test_a_transient_io_error_crosses_processes_as_an_os_error_with_its_errno():
    exc = TransientIOError(errno.ESTALE, "patient P1: t1c_path /a/t1c.nii.gz: Stale file handle")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is TransientIOError and back.errno == errno.ESTALE and str(back) == str(exc)
    assert classify_os_error(back) and transient_cause(back) is back
