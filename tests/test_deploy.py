"""The deploy manifests: each parses, has what a cluster needs, and agrees with the project (image
tag, Ray and Python versions from pyproject.toml; entrypoints are real `gbmmet` commands whose
options exist); no credentials in any file."""

from __future__ import annotations

import json
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
IMAGE = f"registry.example.org/gbmmet/gbmmet:{TAG}"  # the CUDA image: gpu-workers only
CPU_IMAGE = f"{IMAGE}-cpu"  # everything else
PINS = {re.match(r"[\w-]+", d).group(0): d for d in PROJECT["dependencies"]}
MANIFESTS = sorted((DEPLOY / "kuberay").glob("*.yaml"))
RAYJOBS = sorted((DEPLOY / "kuberay").glob("rayjob-*.yaml"))
SITE_GROUPS = {"site-a-workers": "siteA", "site-b-workers": "siteB"}


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
    """Each `gbmmet ...` of an entrypoint (joined by && inside one `bash -c '...'`) is a real command
    with real options."""
    commands = _commands()
    used = []
    words = shlex.split(entrypoint)
    if words[:2] == ["bash", "-c"]:
        assert len(words) == 3, words
        entrypoint = words[2]
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


def _raycluster() -> tuple[dict, dict[str, dict]]:
    rc = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    return rc["spec"]["headGroupSpec"], {g["groupName"]: g for g in rc["spec"]["workerGroupSpecs"]}


def _ray_start_resources(group: dict) -> dict[str, float]:
    """The custom resources of a group's rayStartParams (KubeRay's '"{\\"name\\": n}"' form)."""
    raw = group["rayStartParams"].get("resources")
    return json.loads(json.loads(raw)) if raw else {}


def test_raycluster_has_a_head_drivers_cpu_site_and_gpu_groups():
    rc = _load(DEPLOY / "kuberay" / "raycluster.yaml")
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["spec"]["rayVersion"] == RAY_VERSION
    head, groups = _raycluster()
    assert head["rayStartParams"]["num-cpus"] == "0"  # the head schedules; work goes to workers
    assert set(groups) == {"drivers", "cpu-workers", "gpu-workers", *SITE_GROUPS}
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    pods = [head["template"]] + [g["template"] for g in groups.values()]
    for pod in pods:
        for c in _containers(pod):
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


def test_only_the_gpu_group_runs_the_cuda_image():
    head, groups = _raycluster()
    images = {name: _containers(g["template"])[0]["image"] for name, g in groups.items()}
    assert _containers(head["template"])[0]["image"] == CPU_IMAGE
    assert images.pop("gpu-workers") == IMAGE
    assert images == dict.fromkeys(images, CPU_IMAGE) and {"cpu-workers", "drivers"} <= set(images)
    cfg = _load(DEPLOY / "ray-up" / "cluster.yaml")
    assert cfg["docker"]["image"] == CPU_IMAGE
    assert cfg["available_node_types"]["gpu_worker"]["docker"]["worker_image"] == IMAGE
    assert [k for k, n in cfg["available_node_types"].items() if "docker" in n] == ["gpu_worker"]


def test_cpu_image_recipe_has_no_cuda_and_the_project_pins():
    text = (DEPLOY / "Dockerfile.cpu").read_text()
    base = re.search(r"^FROM (\S+)$", text, re.MULTILINE).group(1)
    assert base == f"rayproject/ray:${{RAY_VERSION}}-py3{PYTHON}-cpu"
    assert "-gpu" not in base and "cu" not in base.split(":")[1]
    assert f"ARG RAY_VERSION={RAY_VERSION}" in text and f"ray.__version__ == '{RAY_VERSION}'" in text
    torch = re.search(r"pip install --no-cache-dir --index-url (\S+) \\\n\s+(.+)\n", text)
    assert torch.group(1) == "https://download.pytorch.org/whl/cpu"
    assert torch.group(2).split() == [PINS["torch"], PINS["torchvision"]]
    assert text.index("download.pytorch.org") < text.index("pip install --no-cache-dir .")  # torch first
    assert "torch.version.cuda is None" in text
    assert f"{TAG}-cpu" in text
    for folder in ("gbmmet", "pipelines", "storage", "dashboards"):
        assert f"COPY --chown=ray:users {folder} ./{folder}" in text


def test_every_site_group_declares_the_site_label_and_the_site_resource():
    from gbmmet.constants import SITE_RESOURCE_PREFIX  # what pipelines/preprocess.py pins on
    _, groups = _raycluster()
    for name, site in SITE_GROUPS.items():
        g = groups[name]
        assert g["minReplicas"] == 0
        assert g["labels"] == {"gbmmet.io/site": site}  # KubeRay >= 1.5 group labels
        assert "labels" not in g["rayStartParams"]  # KubeRay >= 1.5 refuses it there
        assert _ray_start_resources(g)[SITE_RESOURCE_PREFIX + site] > 0
        assert g["template"]["spec"]["nodeSelector"] == {"gbmmet.io/site": site}
    for name, g in groups.items():  # no other group can take a site's pinned tasks
        if name not in SITE_GROUPS:
            assert not any(r.startswith(SITE_RESOURCE_PREFIX) for r in _ray_start_resources(g))
    nodes = _load(DEPLOY / "ray-up" / "cluster.yaml")["available_node_types"]
    sites = {n["labels"]["gbmmet.io/site"]: n for n in nodes.values() if "gbmmet.io/site" in n.get("labels", {})}
    assert set(sites) == set(SITE_GROUPS.values())
    for site, n in sites.items():
        assert n["resources"][SITE_RESOURCE_PREFIX + site] > 0


@pytest.mark.parametrize("path", RAYJOBS, ids=lambda p: p.name)
def test_every_rayjob_reserves_cpus_and_memory_for_its_driver_where_drivers_fit(path):
    spec = _load(path)["spec"]
    cpus = spec["entrypointNumCpus"]
    memory = json.loads(spec["entrypointResources"])["driver-memory-gib"]
    assert 0 < cpus <= 2 and 4 <= memory <= 8
    assert spec.get("entrypointNumGpus", 0) == 0
    _, groups = _raycluster()
    hosts = {n for n, g in groups.items() if "driver-memory-gib" in _ray_start_resources(g)}
    assert hosts == {"drivers"}  # the head has no Ray CPUs: an entrypoint with CPUs can't run there
    drivers = groups["drivers"]
    assert float(drivers["rayStartParams"]["num-cpus"]) >= cpus
    assert _ray_start_resources(drivers)["driver-memory-gib"] >= memory


def test_drivers_group_memory_adds_up_to_its_pod():
    _, groups = _raycluster()
    g = groups["drivers"]
    params = g["rayStartParams"]
    limits = _containers(g["template"])[0]["resources"]["limits"]
    gib = 1 << 30
    used = (_ray_start_resources(g)["driver-memory-gib"] * gib + int(params["memory"])
            + int(params["object-store-memory"]))
    assert used + 2 * gib <= int(limits["memory"].removesuffix("Gi")) * gib  # 2 GiB for Ray's processes
    assert params["num-cpus"] == limits["cpu"]


def test_multi_command_entrypoints_run_on_the_cluster_not_in_the_submitter():
    for path in RAYJOBS:
        entrypoint = _load(path)["spec"]["entrypoint"]
        words = shlex.split(entrypoint)
        if len(_check_entrypoint(entrypoint)) > 1:  # KubeRay >= 1.3 hands the entrypoint to bash
            assert words[:2] == ["bash", "-c"] and len(words) == 3, path
        assert not {"&&", ";", "||"} & set(words), path


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
    assert _containers(job["spec"]["submitterPodTemplate"])[0]["image"] == CPU_IMAGE


def test_ray_up_cluster_file():
    cfg = _load(DEPLOY / "ray-up" / "cluster.yaml")
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
