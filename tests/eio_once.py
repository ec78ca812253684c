"""A read error that happens once, for the tests of transient I/O (tests/pipelines/test_preprocess_io.py),
injected from the tests, not from a hook in the production code.

- In this process: ``fail_once`` wraps ``pipelines.preprocess._hash_path`` (the function an input
  read goes through), with pytest's ``monkeypatch``.
- In Ray's workers: run as a job of its own process (a fresh local Ray),

      PYTHONPATH=. RAY_RUNTIME_ENV_HOOK=tests.eio_once.add_setup_hook GBMMET_TEST_EIO_ONCE=MARKER \\
          python -m tests.eio_once MANIFEST LAKE

  Ray calls ``add_setup_hook`` on the job's runtime environment (``RAY_RUNTIME_ENV_HOOK``), which
  adds ``setup_worker`` as the ``worker_process_setup_hook``: each worker wraps its
  ``_hash_path`` before any task runs. ``run_preprocess`` runs as the command runs it (its own
  ``init_ray``, tasks with their retries); the job prints its summary and lake rows as one JSON line.

Exactly one read fails, whichever process reads first: the failing call is the one that removes
the marker file.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path

MARKER_ENV = "GBMMET_TEST_EIO_ONCE"


def fail_once(read, marker: Path):
    """``read`` (``_hash_path(hashers, path)``), but the call that removes ``marker`` fails with EIO."""

    def read_or_fail(hashers, path):
        try:
            os.remove(marker)
        except FileNotFoundError:
            return read(hashers, path)
        raise OSError(errno.EIO, "Input/output error (injected by tests/eio_once.py)", str(path))

    return read_or_fail


def setup_worker() -> None:
    """Ray's ``worker_process_setup_hook``: this worker's input reads fail once (``MARKER_ENV``)."""
    import pipelines.preprocess as pre

    pre._hash_path = fail_once(pre._hash_path, Path(os.environ[MARKER_ENV]))


def add_setup_hook(runtime_env: dict | None) -> dict:
    """``RAY_RUNTIME_ENV_HOOK``: the job's runtime environment, with ``setup_worker`` added."""
    return {**(runtime_env or {}), "worker_process_setup_hook": f"{__name__}.setup_worker"}


def main(manifest: str, lake: str) -> None:
    from gbmmet import constants as C
    from gbmmet.preprocess.params import PreprocessParams
    from pipelines.preprocess import run_preprocess
    from storage.lake import Lake

    s = run_preprocess([manifest], lake, params=PreprocessParams(iso_mm=2.0), workers=2, show_progress=False,
                       qc=False)
    runs = Lake(lake).read(C.TABLE_PREPROCESS_RUNS, columns=["status", "input_hash"]).to_pylist()
    print(json.dumps({"ok": s.ok, "failed": s.failed, "runs": runs}))


if __name__ == "__main__":
    import ray

    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        ray.shutdown()
