"""Shared fixtures: a seeded generator, a small real local Ray, a tiny synthetic cohort.

Ray stays on loopback (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, ../shared/stack/NOTES.md) with its
temporary files in a short folder of this run, no usage stats and no token file.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

_RAY_TMP = tempfile.mkdtemp(prefix="gbmray", dir="/tmp")
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ["RAY_TMPDIR"] = _RAY_TMP
os.environ.pop("RAY_ADDRESS", None)
# Object storage in tests is a moto server on loopback: fake credentials for every process of the
# session (Ray workers inherit them), and never the instance metadata service or a real account.
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)
os.environ.pop("AWS_SESSION_TOKEN", None)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def default_ctrl_c() -> None:
    """``preexec_fn`` of a subprocess a test will Ctrl-C: SIGINT at its default, as at a terminal.
    A shell starting pytest in the background (``cmd &``) leaves SIGINT ignored, children inherit
    that, and Python then never raises KeyboardInterrupt in them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs for the whole session."""
    import ray

    from pipelines.ray_runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
    shutil.rmtree(_RAY_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """The ``tiny`` preset with truth, written in this process (no Ray), seed 0."""
    from pipelines.synth import SynthConfig, run_synth

    out = tmp_path_factory.mktemp("tiny") / "cohort"
    result = run_synth(SynthConfig(preset="tiny", out=out, seed=0, truth=True), workers=0,
                       show_progress=False)
    assert not result.failed
    return out


@pytest.fixture(scope="session")
def fast_params():
    """Preprocessing on a 2 mm grid: the tiny preset's voxels are 2 mm anyway; 3x faster."""
    from gbmmet.preprocess.params import PreprocessParams

    return PreprocessParams(iso_mm=2.0)


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto's server mode) on a free port of 127.0.0.1, in its own
    process: delta-rs holds the GIL in some calls while it waits on the store (table alterations,
    history), which a server in this process would then never answer. Yields its URL."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # 20 s at most
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert server.poll() is None, "moto_server exited"
            time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not listen on 127.0.0.1 within 20 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def s3_uri(server: str, bucket: str, path: str) -> str:
    """An ``s3://`` URI on the test server (the bucket is made on first write)."""
    return f"s3://{bucket}/{path}?endpoint_override={server}&allow_bucket_creation=true"


def tiny_manifests(cohort: Path) -> list[Path]:
    return sorted(cohort.glob("*/manifest.csv"))


@pytest.fixture(scope="session")
def tiny_lake(tiny_cohort, tmp_path_factory, ray_local, fast_params):
    """The tiny cohort preprocessed on the local Ray into a lake (and its summary)."""
    from pipelines.preprocess import run_preprocess

    cohort = tmp_path_factory.mktemp("tiny-copy") / "cohort"
    shutil.copytree(tiny_cohort, cohort)  # the id map is written beside the manifests
    lake = tmp_path_factory.mktemp("lake") / "lake"
    summary = run_preprocess(tiny_manifests(cohort), lake, params=fast_params, show_progress=False)
    assert not summary.failed, summary.failed
    return lake, summary, cohort
