"""The cluster recipes: they parse, ask for GPUs, install bottletune and keep Ray locked down.

Nothing here talks to AWS or Kubernetes; the launcher recipe is checked against
Ray's own schema and config preparation, the KubeRay ones field by field.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "cluster" / "recipes"
LAUNCHER = RECIPES / "aws-gpu.yaml"
KUBERAY_CLUSTER = RECIPES / "kuberay-raycluster.yaml"
KUBERAY_JOB = RECIPES / "kuberay-rayjob.yaml"
SHARED_CLAIM = RECIPES / "kuberay-shared-pvc.yaml"
DOCKERFILE = RECIPES / "Dockerfile"

MIN_RAY_WITH_TOKEN_AUTH = (2, 52)
TOKEN_LIKE = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def literal_secrets(text: str) -> list[str]:
    """Words that look like a token written out: 32+ hex or base64 characters, digits among them."""
    words = re.split(r"[\s'\"`:,;()\[\]{}]+", text)
    return [
        word for word in words if TOKEN_LIKE.fullmatch(word) and sum(c.isdigit() for c in word) >= 4
    ]


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2])


def test_the_secret_check_catches_tokens() -> None:
    assert literal_secrets("RAY_AUTH_TOKEN: 0f3c9a1e5b7d2c4a6e8f0a1b3c5d7e9f0a2b4c6d8e0f1a3b")
    assert literal_secrets("auth_token='" + "AbCd0123" * 5 + "='")
    assert not literal_secrets("arn:aws:iam::REPLACE_ME:instance-profile/bottletune-ray-node")
    assert not literal_secrets("--out /mnt/shared/runs/bottletune-search")


def test_every_recipe_parses() -> None:
    recipes = sorted(RECIPES.glob("*.yaml"))
    assert {LAUNCHER, KUBERAY_CLUSTER, KUBERAY_JOB, SHARED_CLAIM} <= set(recipes)
    for recipe in recipes:
        load(recipe)


@pytest.mark.parametrize("path", sorted(RECIPES.iterdir()), ids=lambda path: path.name)
def test_no_recipe_holds_a_secret(path: Path) -> None:
    text = path.read_text()
    assert not literal_secrets(text), f"{path.name} seems to hold a literal secret"
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]\s*[\"']?\w", text), path.name


# --- the cluster launcher (ray up) -------------------------------------------------------


def ray_schema() -> dict[str, Any]:
    spec = importlib.util.find_spec("ray")  # finds the package without importing Ray
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    if not path.is_file():
        pytest.skip(f"this Ray ships no {path.name}")
    return json.loads(path.read_text())


def test_launcher_recipe_matches_rays_schema() -> None:
    import jsonschema

    jsonschema.validate(load(LAUNCHER), ray_schema())


def test_launcher_recipe_passes_rays_own_preparation() -> None:
    """What ``ray up`` does to the file before it contacts AWS, in a fresh interpreter."""
    import jsonschema  # noqa: F401  (Ray's validation uses it)

    code = (
        "import sys, yaml\n"
        "from ray.autoscaler._private.util import prepare_config, validate_config\n"
        "config = prepare_config(yaml.safe_load(open(sys.argv[1])))\n"
        "validate_config(config)\n"
        "print(sorted(config['available_node_types']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(LAUNCHER)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "worker.gpu" in result.stdout


def launcher_commands(config: dict[str, Any], *keys: str) -> list[str]:
    return [command for key in keys for command in config.get(key) or []]


def test_launcher_workers_are_gpu_nodes() -> None:
    config = load(LAUNCHER)
    node_types = config["available_node_types"]
    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}
    assert workers
    for name, spec in workers.items():
        assert spec["resources"].get("GPU", 0) >= 1, name
        assert spec["node_config"]["InstanceType"].startswith("g5."), name
        # bottletune's start-up check needs a GPU node up; it cannot see autoscaling.
        assert 1 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"], name
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU") == 0, "trials belong on the GPU workers"


def test_launcher_setup_installs_bottletune_and_the_clusters_ray() -> None:
    config = load(LAUNCHER)
    setup = launcher_commands(config, "setup_commands")
    installs = [command for command in setup if "pip install" in command]
    # What is installed, not the virtualenv's path (~/bottletune-venv/bin/pip).
    installed = [command.rsplit("pip install", 1)[1] for command in installs]
    assert any(re.search(r"bottletune(?!-venv)", packages) for packages in installed)
    ray_pins = {
        pin for command in installs for pin in re.findall(r"ray\[[^\]]*\]==([\d.]+)", command)
    }
    assert len(ray_pins) == 1
    assert version_tuple(ray_pins.pop()) >= MIN_RAY_WITH_TOKEN_AUTH
    gpu_setup = launcher_commands(config, "worker_setup_commands")
    assert any("tensorflow[and-cuda]" in command for command in gpu_setup)


def test_launcher_head_installs_what_rays_default_head_setup_does() -> None:
    """The recipe's head_setup_commands replace Ray's AWS default, which installs boto3.

    Without boto3 in the head's Python, its autoscaler cannot call EC2 and no GPU
    worker ever starts.
    """
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations
    defaults_path = (
        Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "aws" / "defaults.yaml"
    )
    defaults = load(defaults_path)
    wanted = {
        re.split(r"[<>=\[]", shlex.split(command)[-1])[0]
        for command in defaults["head_setup_commands"]
        if "pip install" in command
    }
    assert wanted == {"boto3"}
    head_setup = launcher_commands(load(LAUNCHER), "head_setup_commands")
    for package in wanted:
        assert any(
            "bottletune-venv/bin/pip install" in command and package in command
            for command in head_setup
        ), f"the head's virtualenv does not get {package}"


def test_launcher_enables_token_auth_with_the_token_from_a_secret_store() -> None:
    config = load(LAUNCHER)
    starts = [
        command
        for command in launcher_commands(
            config, "head_start_ray_commands", "worker_start_ray_commands"
        )
        if "ray start" in command
    ]
    assert len(starts) == 2
    for command in starts:
        assert "RAY_AUTH_MODE=token" in command
    fetches = [
        command
        for command in launcher_commands(config, "setup_commands")
        if "~/.ray/auth_token" in command
    ]
    assert len(fetches) == 1
    assert re.search(r"aws (secretsmanager get-secret-value|ssm get-parameter)", fetches[0])
    assert "umask 077" in fetches[0], "the token file must not be readable by others"


def test_launcher_keeps_the_dashboard_on_loopback() -> None:
    config = load(LAUNCHER)
    heads = [c for c in launcher_commands(config, "head_start_ray_commands") if "--head" in c]
    assert heads
    for command in heads:
        assert "--dashboard-host=127.0.0.1" in command
    assert "0.0.0.0" not in LAUNCHER.read_text()


# --- KubeRay ----------------------------------------------------------------------------


def ray_cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    cluster = load(KUBERAY_CLUSTER)
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    yield KUBERAY_CLUSTER.name, cluster["spec"]
    job = load(KUBERAY_JOB)
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    yield KUBERAY_JOB.name, job["spec"]["rayClusterSpec"]


def containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec["headGroupSpec"]["template"]["spec"]["containers"]
    for group in spec["workerGroupSpecs"]:
        yield from group["template"]["spec"]["containers"]


def test_kuberay_gpu_workers_declare_gpus() -> None:
    for name, spec in ray_cluster_specs():
        assert spec["workerGroupSpecs"], name
        for group in spec["workerGroupSpecs"]:
            assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            for container in group["template"]["spec"]["containers"]:
                limits = container["resources"]["limits"]
                assert int(limits["nvidia.com/gpu"]) >= 1, (name, group["groupName"])
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" not in head["resources"].get("limits", {})


def test_kuberay_enables_token_auth_from_a_secret() -> None:
    for name, spec in ray_cluster_specs():
        assert spec["authOptions"]["mode"] == "token", name
        assert version_tuple(spec["rayVersion"]) >= MIN_RAY_WITH_TOKEN_AUTH, name
        # The operator puts the token in a Secret; nothing may set it as a literal.
        for container in containers(spec):
            for variable in container.get("env", []):
                if variable["name"] == "RAY_AUTH_TOKEN":
                    assert "value" not in variable, name
                    assert variable["valueFrom"]["secretKeyRef"]["key"] == "auth_token"


def test_kuberay_head_service_stays_inside_the_cluster() -> None:
    for name, spec in ray_cluster_specs():
        assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", name
        assert not spec["headGroupSpec"].get("enableIngress", False), name


def test_kuberay_pods_run_the_bottletune_image() -> None:
    dockerfile = DOCKERFILE.read_text()
    base = re.search(r"^FROM rayproject/ray:([\d.]+)-py\d+-gpu$", dockerfile, re.MULTILINE)
    assert base is not None
    assert re.search(r"pip install .*/home/ray/bottletune", dockerfile)
    for name, spec in ray_cluster_specs():
        assert spec["rayVersion"] == base.group(1), f"{name}: Ray differs from the image's"
        images = {container["image"] for container in containers(spec)}
        assert len(images) == 1 and images.pop().endswith("/bottletune:0.1.0"), name


def test_kuberay_nodes_share_one_volume() -> None:
    claim = load(SHARED_CLAIM)
    assert claim["kind"] == "PersistentVolumeClaim"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for name, spec in ray_cluster_specs():
        pod_specs = [spec["headGroupSpec"]["template"]["spec"]] + [
            group["template"]["spec"] for group in spec["workerGroupSpecs"]
        ]
        for pod in pod_specs:
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
            assert claims == {claim["metadata"]["name"]}, name
            mounts = {m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
            assert mounts == {"/mnt/shared"}, name


def test_rayjob_runs_a_valid_bottletune_search_on_shared_storage() -> None:
    from cli.main import build_parser
    from tuning.config import load_config, parse_overrides

    entrypoint = shlex.split(load(KUBERAY_JOB)["spec"]["entrypoint"])
    assert entrypoint[:2] == ["bottletune", "tune"]
    args = build_parser().parse_args(entrypoint[1:])
    assert args.address == "auto"
    config = load_config(args.config, parse_overrides(args.overrides))
    for path in (args.data, args.out, config.extraction.cache_dir):
        assert str(path).startswith("/mnt/shared/"), path
    assert 0 < config.resources.gpus_per_trial < 1, "the recipe packs several trials per GPU"
