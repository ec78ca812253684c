"""One exception type per kind of failure a user can act on."""

from __future__ import annotations

import errno

#: errno values of a read that may succeed when tried again: a flaky disk or controller (EIO), a
#: busy or momentarily unavailable resource (EAGAIN, EBUSY), a network file system timing out,
#: dropping its connection or losing the file handle (ETIMEDOUT, ECONNRESET, ESTALE). Any other
#: errno (ENOENT, EACCES, EISDIR, ...) says the same thing on every try.
TRANSIENT_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.ETIMEDOUT, errno.ECONNRESET, errno.EBUSY,
                              errno.ESTALE})


class GbmmetError(Exception):
    """Base class of every error gbmmet raises on purpose."""


class ConfigError(GbmmetError, ValueError):
    """A parameter, preset or option is impossible (named in the message)."""


class OutputExistsError(GbmmetError, FileExistsError):
    """The output folder is not empty and ``overwrite`` was not asked for."""


class TemplateError(GbmmetError, FileNotFoundError):
    """The bundled brain template cannot be found (nilearn missing or incomplete)."""


class ManifestError(GbmmetError, ValueError):
    """The manifest is unusable; the message lists every offending row. Nothing ran."""


class RunFailed(GbmmetError, RuntimeError):
    """A job failed after its retries (e.g. a training fold); what finished is kept, and
    re-running the same command resumes. The command exits with code 1."""


class PatientError(GbmmetError):
    """One patient cannot be processed. ``kind`` is a stable short name recorded in the lake.

    The message names the patient and, where one is at fault, the file.
    """

    kind = "error"

    def __init__(self, message: str, *, patient_id: str | None = None, path: str | None = None):
        super().__init__(message)
        self.patient_id = patient_id
        self.path = path


class MissingFileError(PatientError, FileNotFoundError):
    kind = "missing_file"


class ImageFileError(PatientError):
    """An image file or DICOM folder cannot be read (corrupt, not an image, mixed series)."""

    kind = "unreadable_image"


class MixedSeriesError(ImageFileError):
    kind = "mixed_dicom_series"


class ImageContentError(PatientError):
    """An image is readable but unusable: wrong dimension, NaN / inf voxels, empty."""

    kind = "bad_image"


class RoiError(PatientError):
    """The ROI is empty, or lies outside the image."""

    kind = "bad_roi"


class RegistrationError(PatientError):
    """CE-T1 and T2 cannot be registered (e.g. they do not overlap)."""

    kind = "registration_failed"


class NormalizationError(PatientError):
    kind = "normalization_failed"


class TruncatedImageError(ImageFileError):
    """The image file ends early or its compression is damaged (e.g. a ``.nii.gz`` cut short)."""

    kind = "truncated_image"


class ImageHeaderError(ImageContentError):
    """The header is unusable: zero or negative voxel spacing, no usable orientation, sform and
    qform that disagree beyond the tolerance, a complex or otherwise non-real voxel type."""

    kind = "bad_header"


class RoiGridError(RoiError):
    """The ROI's grid (size, spacing, origin, direction) does not match the T2 it was drawn on."""

    kind = "roi_grid_mismatch"


class RegistrationSuspectError(RegistrationError):
    """Registration ran but its QC rule says the CE-T1 and T2 do not match (e.g. another
    patient's CE-T1); the rule and its numbers are in the message."""

    kind = "registration_suspect"


class LakeError(GbmmetError, ValueError):
    """The lake cannot be used as asked: its root is a file, read-only for a job that writes, or
    its pseudonym key is missing or damaged. Nothing was processed."""


class InputWarning(UserWarning):
    """Input accepted but questionable (e.g. an ROI partly outside the image). Recorded with the
    patient's attempt in ``preprocess_runs.warnings`` as ``{"kind": ..., "message": ...}``."""

    def __init__(self, message: str, *, kind: str, patient_id: str | None = None, path: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.patient_id = patient_id
        self.path = path


class TransientIOError(GbmmetError, OSError):
    """Reading an input failed with an errno that may clear (``TRANSIENT_ERRNOS``): the task is
    retried (Ray's ``retry_exceptions``); ``kind`` is recorded once the retries are spent. Built
    as ``TransientIOError(errno, message)``, so it pickles as an ``OSError`` does."""

    kind = "io_error"


def classify_os_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a transient read error, worth retrying: an ``OSError`` whose errno is in
    ``TRANSIENT_ERRNOS`` (a ``TransientIOError`` already is). Anything else fails at once."""
    return isinstance(exc, TransientIOError) or (isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS)


def transient_cause(exc: BaseException) -> TransientIOError | None:
    """``exc`` or the first error it was raised from or while handling (``__cause__``,
    ``__context__``) that is transient (``classify_os_error``), as a ``TransientIOError``; None if
    none is: a reader that wrapped an EIO in its own error is still retried."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TransientIOError):
            return exc
        if classify_os_error(exc):
            return TransientIOError(exc.errno, str(exc))
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
