"""Static checks of ``infra/``: every manifest parses and is consistent with the worker image.

Nothing here needs a cloud account, a Kubernetes cluster or Docker: the cluster launcher config
goes through Ray's own schema validation, the KubeRay manifests through structural checks of the
fields KubeRay reads, and the Dockerfile through checks of what it installs and what it must not
do (download model weights). One image reference, ``infra/IMAGE``, ties them together.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

import labeler
from labeler.config import build_config

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
REQUIREMENTS = INFRA / "docker" / "requirements.txt"
IMAGE = (INFRA / "IMAGE").read_text().strip()
K8S_MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _yaml_files() -> list[Path]:
    return sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _image_versions() -> dict[str, str]:
    """``0.1.0-ray2.60.0-cuda13.0`` -> labeler, ray and cuda versions of the image tag."""
    match = re.fullmatch(r"[\w.\-/:]+:(?P<labeler>[\d.]+)-ray(?P<ray>[\d.]+)-cuda(?P<cuda>[\d.]+)",
                         IMAGE)
    assert match, f"infra/IMAGE {IMAGE!r} should end in :<labeler>-ray<ray>-cuda<cuda>"
    return match.groupdict()


def _dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE.read_text(), re.MULTILINE))


def _pins() -> dict[str, str]:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            specs = list(requirement.specifier)
            assert len(specs) == 1 and specs[0].operator == "==", f"not pinned: {line}"
            pins[requirement.name.lower()] = specs[0].version
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --------------------------------------------------------------------------------------------
# All files
# --------------------------------------------------------------------------------------------


def test_expected_files_exist():
    for relative in ("IMAGE", "README.md", "docker/Dockerfile", "docker/requirements.txt",
                     "ray/cluster.yaml", "k8s/rayjob.yaml", "k8s/raycluster.yaml"):
        assert (INFRA / relative).is_file(), relative


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses_into_mappings(path):
    documents = _documents(path)
    assert documents, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in documents)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_image_reference_is_the_built_image(path):
    images = re.findall(r"^\s*(?:-\s*)?image:\s*(\S+)", path.read_text(), re.MULTILINE)
    assert images, f"{path} names no image"
    assert set(images) == {IMAGE}, f"{path}: {set(images)} != infra/IMAGE {IMAGE}"


def test_image_tag_matches_the_package_and_the_pins():
    versions, args, pins = _image_versions(), _dockerfile_args(), _pins()
    assert versions["labeler"] == labeler.__version__ == args["LABELER_VERSION"]
    assert versions["ray"] == args["RAY_VERSION"] == pins["ray"]
    assert args["TORCH_VERSION"] == pins["torch"]
    base = re.search(r"^FROM nvidia/cuda:(\d+\.\d+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert base and base.group(1) == versions["cuda"]


# --------------------------------------------------------------------------------------------
# Dockerfile and pinned requirements
# --------------------------------------------------------------------------------------------


def _run_instructions() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line[4:] for line in text.splitlines() if line.startswith("RUN ")]


def test_dockerfile_base_is_a_pinned_cuda_image():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.MULTILINE)
    assert froms, "no FROM"
    for image in froms:
        _, _, tag = image.partition(":")
        assert "@sha256:" in image or (tag and tag != "latest" and re.match(r"\d", tag)), image
    assert froms[0].startswith("nvidia/cuda:") and "runtime" in froms[0]


def test_dockerfile_installs_pinned_requirements_and_the_package():
    text = DOCKERFILE.read_text()
    runs = " ".join(_run_instructions())
    assert re.search(r"^COPY infra/docker/requirements.txt \S+", text, re.MULTILINE)
    assert re.search(r"pip install -r \S*requirements.txt", runs)
    assert re.search(r"^COPY labeler /src/labeler", text, re.MULTILINE)
    assert re.search(r"^COPY pyproject.toml README.md /src/", text, re.MULTILINE)
    assert re.search(r"pip install --no-deps /src", runs)


def test_dockerfile_bakes_in_no_model_weights():
    text = DOCKERFILE.read_text()
    for run in _run_instructions():
        assert not re.search(r"(^|&&|;|\|)\s*(wget|curl)\s", run), f"downloads at build: {run}"
        assert not re.search(r"snapshot_download|from_pretrained|hf_hub_download|"
                             r"huggingface-cli|\bhf download|load_backbone|labeler run", run), run
    assert not re.search(r"\.(safetensors|ckpt|bin|pt)\b", text.replace("/usr/bin", ""))
    env = dict(re.findall(r"^\s*(LABELER_CACHE|HF_HOME)=(\S+)", text, re.MULTILINE))
    assert env.get("LABELER_CACHE", "").startswith("/cache/")
    assert env.get("HF_HOME", "").startswith("/cache/")


def test_dockerignore_keeps_what_the_dockerfile_copies():
    ignore = (INFRA / "docker" / "Dockerfile.dockerignore").read_text().splitlines()
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), re.MULTILINE)
    for source in " ".join(copied).split():
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, source


def test_requirements_pin_every_dependency_within_pyproject_ranges():
    pins = _pins()
    for spec in _pyproject()["project"]["dependencies"]:
        requirement = Requirement(spec.split("#")[0])
        name = requirement.name.lower()
        assert name in pins, f"{name} is not pinned in {REQUIREMENTS}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])


# --------------------------------------------------------------------------------------------
# Ray cluster launcher
# --------------------------------------------------------------------------------------------


def _launcher() -> dict:
    (config,) = _documents(INFRA / "ray" / "cluster.yaml")
    return config


def test_cluster_launcher_required_fields_and_node_types():
    config = _launcher()
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "docker"):
        assert key in config, key
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    gpu_workers = [spec for spec in workers if spec.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_workers, "no GPU worker type"
    for spec in gpu_workers:
        assert 0 <= spec["min_workers"] < spec["max_workers"] <= config["max_workers"]
        assert spec["node_config"]["InstanceType"]
    assert config["docker"]["image"] == IMAGE
    assert any("--num-gpus=0" in command for command in config["head_start_ray_commands"])


def test_cluster_launcher_pins_the_image_versions():
    setup = " ".join(_launcher()["setup_commands"])
    args = _dockerfile_args()
    assert f"'{args['RAY_VERSION']}'" in setup and f"'{args['TORCH_VERSION']}'" in setup


def test_cluster_launcher_passes_rays_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")  # private API: ray is pinned
    util.validate_config(util.fillout_defaults(_launcher()))


# --------------------------------------------------------------------------------------------
# KubeRay
# --------------------------------------------------------------------------------------------


def _k8s(kind: str) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in K8S_MANIFESTS for doc in _documents(path)
            if doc.get("kind") == kind]


@pytest.mark.parametrize("path", K8S_MANIFESTS, ids=lambda p: p.name)
def test_k8s_documents_have_the_required_fields(path):
    for doc in _documents(path):
        assert doc.get("apiVersion") and doc.get("kind"), doc
        name = doc.get("metadata", {}).get("name", "")
        assert DNS_1123.match(name) and len(name) <= 63, name
        assert ("data" if doc["kind"] == "ConfigMap" else "spec") in doc, doc["kind"]
        if doc["kind"] in ("RayJob", "RayCluster"):
            assert doc["apiVersion"] == "ray.io/v1"


def _pod_spec_problems(template: dict, gpu: bool) -> list[str]:
    """What is wrong with a Ray pod template (head: gpu False; GPU worker: gpu True)."""
    problems = []
    spec = template["spec"]
    container = spec["containers"][0]  # KubeRay runs Ray in the first container
    if container["image"] != IMAGE:
        problems.append(f"image {container['image']}")
    resources = container.get("resources", {})
    limits, requests = resources.get("limits", {}), resources.get("requests", {})
    if gpu:
        if int(limits.get("nvidia.com/gpu", 0)) < 1:
            problems.append("no nvidia.com/gpu limit")
        if requests.get("nvidia.com/gpu", limits.get("nvidia.com/gpu")) != limits.get(
                "nvidia.com/gpu"):
            problems.append("GPU request differs from the limit")
    elif "nvidia.com/gpu" in limits or "nvidia.com/gpu" in requests:
        problems.append("the head asks for a GPU")
    for key in ("cpu", "memory"):
        if key not in limits or key not in requests:
            problems.append(f"no {key} request/limit")
    volumes = {volume["name"] for volume in spec.get("volumes", [])}
    mounts = {mount["name"]: mount["mountPath"] for mount in container.get("volumeMounts", [])}
    if set(mounts) - volumes:
        problems.append(f"mounts without volumes: {set(mounts) - volumes}")
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    cache = env.get("LABELER_CACHE") or ""
    if not any(cache.startswith(path.rstrip("/") + "/") for path in mounts.values()):
        problems.append(f"LABELER_CACHE {cache!r} is not on a mounted volume")
    return problems


def _check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == _image_versions()["ray"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    for group in [head, *spec["workerGroupSpecs"]]:  # a map of strings in the CRD
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())
    assert _pod_spec_problems(head["template"], gpu=False) == []
    groups = spec["workerGroupSpecs"]
    assert groups
    for group in groups:
        assert DNS_1123.match(group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], "the GPU group should autoscale"
        assert _pod_spec_problems(group["template"], gpu=True) == [], group["groupName"]
    assert spec.get("enableInTreeAutoscaling") is True


def test_rayjob_runs_labeler_on_a_gpu_cluster():
    ((_, job),) = _k8s("RayJob")
    spec = job["spec"]
    assert re.match(r"(python -m )?labeler run \S+", spec["entrypoint"])
    assert "--address auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True and spec["backoffLimit"] >= 1
    _check_ray_cluster_spec(spec["rayClusterSpec"])


def test_rayjob_job_file_is_mounted_on_the_head_and_valid():
    (path, job), = _k8s("RayJob")
    job_file = job["spec"]["entrypoint"].split()[2 if job["spec"]["entrypoint"].startswith(
        "labeler") else 4]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    folder, _, name = job_file.rpartition("/")
    volume = next(v for v in head["volumes"] if v["name"] == mounts[folder])
    maps = {doc["metadata"]["name"]: doc for p, doc in _k8s("ConfigMap") if p == path}
    text = maps[volume["configMap"]["name"]]["data"][name]
    config = build_config(tomllib.loads(text), {})
    assert config.output.startswith("s3://"), "a RayJob's output must survive its cluster"
    assert config.model_name.startswith("s3://"), "workers read the model from object storage"
    # GPU pods may not be up when the job starts: GPU workers must be asked for explicitly
    assert config.gpus_per_worker and config.gpus_per_worker >= 1 and config.workers


def test_raycluster_is_a_gpu_cluster_with_a_shared_model_cache():
    (path, cluster), = _k8s("RayCluster")
    _check_ray_cluster_spec(cluster["spec"])
    claims = {doc["metadata"]["name"] for p, doc in _k8s("PersistentVolumeClaim") if p == path}
    templates = [cluster["spec"]["headGroupSpec"]["template"]] + [
        group["template"] for group in cluster["spec"]["workerGroupSpecs"]]
    for template in templates:
        for volume in template["spec"]["volumes"]:
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------


def test_infra_readme_walks_through_every_route():
    text = (INFRA / "README.md").read_text()
    for needle in ("docker build", "infra/IMAGE", "ray up infra/ray/cluster.yaml",
                   "kubectl apply -f infra/k8s/rayjob.yaml", "infra/k8s/raycluster.yaml",
                   "labeler submit", "labeler logs", "labeler stop", "s3://"):
        assert needle in text, needle
