"""The deploy manifests: each parses, has what a cluster needs, and agrees with the project (image
tag, Ray and Python versions from pyproject.toml; entrypoints are real `gbmmet` commands whose
options exist); no credentials in any file."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from pipelines.cli import app

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
RAY_VERSION = next(re.match(r"ray\[.*\]==(.+)", d).group(1) for d in PROJECT["dependencies"] if d.startswith("ray["))
PYTHON = re.search(r">=3\.(\d+)", PROJECT["requires-python"]).group(1)
TAG = f"{PROJECT['version']}-ray{RAY_VERSION}-py3{PYTHON}"
IMAGE = f"registry.example.org/gbmmet/gbmmet:{TAG}"
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))


def _load(path: Path) -> dict:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert len(docs) == 1, path
    return docs[0]


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def _commands() -> dict[str, dict[str, set[str]]]:
    """Every `gbmmet` command (``readers import`` as one) with its option names and arguments."""
    root = typer.main.get_command(app)
    out = {}

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                walk(cmd, prefix + [name])
            else:
                opts = {o for p in cmd.params for o in (p.opts + p.secondary_opts) if o.startswith("-")}
                out[" ".join(prefix + [name])] = {"options": opts,
                                                   "arguments": {p.name for p in cmd.params if not p.opts[0].startswith("-")}}
    walk(root, [])
    return out


def _check_entrypoint(entrypoint: str) -> list[str]:
    """Each `gbmmet ...` of an entrypoint (joined by &&) is a real command with real options."""
    commands = _commands()
    used = []
    for part in entrypoint.split("&&"):
        words = shlex.split(part)
        assert words[0] == "gbmmet", part
        name = " ".join(words[1:3]) if " ".join(words[1:3]) in commands else words[1]
        assert name in commands, (name, sorted(commands))
        for w in words[1 + len(name.split()):]:
            if w.startswith("--"):
                assert w.split("=")[0] in commands[name]["options"], (name, w, sorted(commands[name]["options"]))
        used.append(name)
    return used


def test_image_recipe_matches_the_project():
    text = (DEPLOY / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={RAY_VERSION}" in text
    assert re.search(rf"FROM rayproject/ray:\$\{{RAY_VERSION\}}-py3{PYTHON}(-gpu)?\n", text)
    assert "pip install --no-cache-dir ." in text and f"ray.__version__ == '{RAY_VERSION}'" in text
    assert TAG in text
    for folder in ("gbmmet", "pipelines", "storage", "dashboards"):  # every package pyproject ships
        assert f"COPY --chown=ray:users {folder} ./{folder}" in text


def test_raycluster_has_a_head_a_cpu_group_and_a_gpu_group():
    rc = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == RAY_VERSION
    head = rc["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head schedules; work goes to workers
    groups = {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    pods = [head["template"]] + [g["template"] for g in groups.values()]
    for pod in pods:
        for c in _containers(pod):
            assert c["image"] == IMAGE
            res = c["resources"]
            assert res["requests"] == res["limits"], c["name"]  # Ray sizes itself from the limits
            assert {"cpu", "memory"} <= set(res["limits"])
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["GBMMET_LAKE"].startswith("s3://")
            assert c["envFrom"] == [{"secretRef": {"name": "gbmmet-s3", "optional": True}}]
            assert any(m["mountPath"] == "/data" and m["readOnly"] for m in c["volumeMounts"])
    gpu = _containers(groups["gpu-workers"]["template"])[0]["resources"]["limits"]
    cpu = _containers(groups["cpu-workers"]["template"])[0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1" and "nvidia.com/gpu" not in cpu


@pytest.mark.parametrize("name,commands", [
    ("rayjob-preprocess.yaml", ["preprocess"]),
    ("rayjob-train.yaml", ["features", "train"]),
    ("rayjob-evaluate.yaml", ["readers import", "readers import", "evaluate"]),
])
def test_rayjobs_run_real_commands_on_the_cluster(name, commands):
    job = _load(DEPLOY / "kuberay" / name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "gbmmet"}
    assert _check_entrypoint(job["spec"]["entrypoint"]) == commands
    assert "--lake s3://gbmmet-lake/lake" in job["spec"]["entrypoint"]
    assert _containers(job["spec"]["submitterPodTemplate"])[0]["image"] == IMAGE


def test_ray_up_cluster_file():
    cfg = _load(DEPLOY / "ray-up" / "cluster.yaml")
    assert cfg["docker"]["image"] == IMAGE
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}
    workers = [n for k, n in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert sum(n["max_workers"] for n in workers) <= cfg["max_workers"]
    for n in cfg["available_node_types"].values():  # object storage through the instance's identity
        assert n["node_config"]["IamInstanceProfile"] == {"Name": "gbmmet-node"}
    assert any("--num-cpus=0" in c for c in cfg["head_start_ray_commands"])


def test_entrypoint_check_catches_a_wrong_option():
    with pytest.raises(AssertionError):
        _check_entrypoint("gbmmet train --lake x --run r --epoch 5")  # the option is --epochs
    with pytest.raises(AssertionError):
        _check_entrypoint("gbmmet fit --lake x")


def test_no_credentials_in_any_deploy_file():
    secret = re.compile(r"(AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|AWS_SECRET_ACCESS_KEY\s*[:=]\s*\S|"
                        r"password\s*[:=]\s*\S)", re.IGNORECASE)
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(files) >= 6
    for p in files:
        text = p.read_text()
        hits = [m.group(0) for m in secret.finditer(text) if "--from-literal" not in text[max(0, m.start() - 40):m.start()]]
        assert not hits, (p, hits)
