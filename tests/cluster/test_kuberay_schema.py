"""The KubeRay manifests and the image they run, checked without a Kubernetes cluster.

Every document of cluster/kuberay/*.yaml is validated against kuberay_v1_schema.yaml: a strict JSON
Schema this project wrote from KubeRay's ray.io/v1 API types and the core/networking types they embed,
so a misspelt key or a key one level off fails here as it would in `kubectl apply`. Mutated copies of
the manifests show that the schema catches each kind of mistake. Beside the fields: the RayJob applies
with pvc.yaml alone, every Secret a manifest reads is one the README tells you to create, and
cluster/Dockerfile builds the image those manifests name with the versions the project pins.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mdf_search.search.space import load_spec

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
SCHEMA = yaml.safe_load((Path(__file__).parent / "kuberay_v1_schema.yaml").read_text())
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|KEY|KEY_ID)(_|$)")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}", doc))
    return found


DOCUMENTS = _documents()


def _doc(name: str, kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(d for n, d in DOCUMENTS if n == f"{name}:{kind}"))


def _errors(doc: Any) -> list[str]:
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in SCHEMA["$defs"]:
        return [f"kind {kind!r} has no schema"]
    schema = {"$schema": SCHEMA["$schema"], "$defs": SCHEMA["$defs"], "$ref": f"#/$defs/{kind}"}
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def _object_schemas(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        if "properties" in node:
            yield where, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _object_schemas(value, f"{where}/{i}")


def test_every_level_of_the_schema_refuses_unknown_keys() -> None:
    levels = list(_object_schemas(SCHEMA))
    assert len(levels) > 30
    loose = [where for where, node in levels if node.get("additionalProperties") is not False]
    assert not loose, loose


def test_the_manifests_are_the_ones_expected() -> None:
    assert [n for n, _ in DOCUMENTS] == [
        "pvc.yaml:PersistentVolumeClaim", "raycluster.yaml:RayCluster", "raycluster.yaml:NetworkPolicy",
        "rayjob.yaml:RayJob",
    ]  # fmt: skip


@pytest.mark.parametrize(("name", "doc"), DOCUMENTS, ids=[n for n, _ in DOCUMENTS])
def test_every_manifest_uses_only_documented_fields_in_their_places(name: str, doc: dict[str, Any]) -> None:
    assert _errors(doc) == [], name


def _cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


def _rename(mapping: dict[str, Any], old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def _typo_top(doc: dict[str, Any]) -> None:
    _rename(_cluster(doc), "enableInTreeAutoscaling", "enableIntreeAutoscaling")


def _auth_one_level_down(doc: dict[str, Any]) -> None:
    _cluster(doc)["headGroupSpec"]["authOptions"] = _cluster(doc).pop("authOptions")


def _auth_one_level_up(doc: dict[str, Any]) -> None:
    doc["spec"]["authOptions"] = _cluster(doc).pop("authOptions")


def _idle_timeout_one_level_up(doc: dict[str, Any]) -> None:
    _cluster(doc)["idleTimeoutSeconds"] = _cluster(doc)["autoscalerOptions"].pop("idleTimeoutSeconds")


def _start_param_not_a_string(doc: dict[str, Any]) -> None:
    _cluster(doc)["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0


def _auth_mode_case(doc: dict[str, Any]) -> None:
    _cluster(doc)["authOptions"]["mode"] = "Token"


def _worker_typo(doc: dict[str, Any]) -> None:
    _rename(_cluster(doc)["workerGroupSpecs"][0], "maxReplicas", "maxReplica")


def _volume_mounts_typo(doc: dict[str, Any]) -> None:
    container = _cluster(doc)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    _rename(container, "volumeMounts", "volumeMount")


def _container_field_in_pod(doc: dict[str, Any]) -> None:
    pod = _cluster(doc)["headGroupSpec"]["template"]["spec"]
    pod["image"] = pod["containers"][0].pop("image")


def _claim_typo(doc: dict[str, Any]) -> None:
    volume = _cluster(doc)["headGroupSpec"]["template"]["spec"]["volumes"][0]
    _rename(volume["persistentVolumeClaim"], "claimName", "claim")


def _secret_ref_typo(doc: dict[str, Any]) -> None:
    env = _cluster(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    ref = next(e for e in env if "secretKeyRef" in e.get("valueFrom", {}))["valueFrom"]["secretKeyRef"]
    _rename(ref, "name", "secret")


def _job_field_typo(doc: dict[str, Any]) -> None:
    _rename(doc["spec"], "shutdownAfterJobFinishes", "shutdownAfterJobFinish")


def _cluster_field_in_job_spec(doc: dict[str, Any]) -> None:
    doc["spec"]["enableInTreeAutoscaling"] = doc["spec"]["rayClusterSpec"].pop("enableInTreeAutoscaling")


MUTATIONS: list[tuple[str, str, Callable[[dict[str, Any]], None], str]] = [
    ("raycluster.yaml:RayCluster", "typo in spec", _typo_top, "'enableIntreeAutoscaling' was unexpected"),
    ("raycluster.yaml:RayCluster", "authOptions under headGroupSpec", _auth_one_level_down,
     "spec/headGroupSpec: Additional properties are not allowed ('authOptions'"),
    ("rayjob.yaml:RayJob", "authOptions beside rayClusterSpec", _auth_one_level_up,
     "spec: Additional properties are not allowed ('authOptions'"),
    ("raycluster.yaml:RayCluster", "idleTimeoutSeconds out of autoscalerOptions", _idle_timeout_one_level_up,
     "spec: Additional properties are not allowed ('idleTimeoutSeconds'"),
    ("raycluster.yaml:RayCluster", "rayStartParams value not a string", _start_param_not_a_string,
     "spec/headGroupSpec/rayStartParams/num-gpus: 0 is not of type 'string'"),
    ("rayjob.yaml:RayJob", "authOptions.mode Token", _auth_mode_case,
     "spec/rayClusterSpec/authOptions/mode: 'Token' is not one of ['disabled', 'token']"),
    ("raycluster.yaml:RayCluster", "maxReplica", _worker_typo, "'maxReplica' was unexpected"),
    ("rayjob.yaml:RayJob", "volumeMount", _volume_mounts_typo, "'volumeMount' was unexpected"),
    ("raycluster.yaml:RayCluster", "container image on the pod", _container_field_in_pod,
     "template/spec: Additional properties are not allowed ('image'"),
    ("rayjob.yaml:RayJob", "claim for claimName", _claim_typo, "'claimName' is a required property"),
    ("raycluster.yaml:RayCluster", "secretKeyRef.secret", _secret_ref_typo, "'secret' was unexpected"),
    ("rayjob.yaml:RayJob", "shutdownAfterJobFinish", _job_field_typo, "'shutdownAfterJobFinish' was unexpected"),
    ("rayjob.yaml:RayJob", "cluster field in the job spec", _cluster_field_in_job_spec,
     "spec: Additional properties are not allowed ('enableInTreeAutoscaling'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "what", "mutate", "expected"), MUTATIONS, ids=[m[1] for m in MUTATIONS])
def test_a_mutated_manifest_is_refused(
    name: str, what: str, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    doc = _doc(*name.split(":"))
    assert _errors(doc) == []
    mutate(doc)
    errors = _errors(doc)
    assert any(expected in e for e in errors), (what, errors)


def test_a_manifest_of_an_unknown_kind_is_refused() -> None:
    assert _errors({"apiVersion": "ray.io/v1", "kind": "RayClustr"}) == ["kind 'RayClustr' has no schema"]


# ---- what the manifests need besides themselves ----


def _walk(node: Any, key: str) -> Iterator[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def test_the_rayjob_needs_only_pvc_yaml_and_nothing_defines_the_pvc_twice() -> None:
    defined = {d["metadata"]["name"] for n, d in DOCUMENTS if d["kind"] == "PersistentVolumeClaim"}
    assert {n.split(":")[0] for n, d in DOCUMENTS if d["kind"] == "PersistentVolumeClaim"} == {"pvc.yaml"}
    for name in ("raycluster.yaml:RayCluster", "rayjob.yaml:RayJob"):
        claims = {c["claimName"] for c in _walk(_doc(*name.split(":")), "persistentVolumeClaim")}
        assert claims and claims <= defined, (name, claims, defined)
    job = _doc("rayjob.yaml", "RayJob")
    assert "rayClusterSpec" in job["spec"] and "clusterSelector" not in job["spec"], "its own cluster"
    first = (KUBERAY / "rayjob.yaml").read_text().splitlines()[0]
    assert "kubectl apply -f cluster/kuberay/pvc.yaml -f cluster/kuberay/rayjob.yaml" in first


def test_every_secret_a_manifest_reads_is_created_in_the_readme() -> None:
    readme = (ROOT / "cluster" / "README.md").read_text() + "".join(
        p.read_text() for p in KUBERAY.glob("*.yaml")
    )
    created = set(re.findall(r"kubectl create secret generic ([\w-]+)", readme))
    used = {ref["name"] for _, d in DOCUMENTS for ref in _walk(d, "secretKeyRef")}
    used |= {a["secretName"] for _, d in DOCUMENTS for a in _walk(d, "authOptions")}
    assert used and used <= created, used - created
    assert "--from-file=auth_token=" in readme  # the data key authOptions.secretName requires


def test_the_rayjob_deadline_leaves_the_space_its_whole_wall_time() -> None:
    job = _doc("rayjob.yaml", "RayJob")
    space = load_spec(ROOT / job["spec"]["entrypoint"].split()[2])
    assert space.budget.max_wall_time is not None
    assert job["spec"]["activeDeadlineSeconds"] >= space.budget.max_wall_time


def test_every_pod_shares_the_data_cache() -> None:
    for name in ("raycluster.yaml:RayCluster", "rayjob.yaml:RayJob"):
        spec = _cluster(_doc(*name.split(":")))
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            container = group["template"]["spec"]["containers"][0]
            env = {e["name"]: e.get("value") for e in container["env"]}
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert env["MDF_SEARCH_CACHE"].startswith("/shared/"), name
            assert mounts["/shared"]["name"] == "shared" and not mounts["/shared"].get("readOnly"), name
            assert container["image"] == "registry.example.com/mdf-search:latest", name


# ---- the image ----

DOCKERFILE = (ROOT / "cluster" / "Dockerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_the_image_pins_the_ray_python_and_torch_the_project_uses() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_pin = next(d for d in project["dependencies"] if d.startswith("ray["))
    assert ">=2.60,<2.61" in ray_pin and project["requires-python"] == ">=3.11"
    steps = _instructions()
    assert steps[0] == ("FROM", "rayproject/ray:2.60.0-py311-gpu")
    args = dict(a.split("=", 1) for op, a in steps if op == "ARG")
    constraint = (ROOT / "constraints.txt").read_text()
    assert f"torch=={args['TORCH_VERSION']}" in constraint.split()
    assert re.fullmatch(r"cu1\d\d", args["TORCH_CUDA"])
    runs = [a for op, a in steps if op == "RUN"]
    assert (
        'pip install "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"'
        in (runs[0])
    )
    assert "pip install -c /tmp/torch-constraint.txt -e /app" in runs[1], "torch held while the rest resolves"


def test_the_image_copies_the_package_only_and_holds_no_secret() -> None:
    steps = _instructions()
    copies = [a.split()[:-1] for op, a in steps if op == "COPY"]
    sources = {src for srcs in copies for src in srcs if not src.startswith("--")}
    assert sources == {"pyproject.toml", "README.md", "mdf_search", "search_spaces", "cluster"}, sources
    for op, arg in steps:
        if op in ("ARG", "ENV"):
            for name in re.findall(r"([A-Z_][A-Z0-9_]*)=", arg):
                assert not SECRET_NAME.search(name), (op, name)
    users = [a for op, a in steps if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("WORKDIR", "/app") in steps  # the RayJob's runtime env uploads /app as its working dir
    job = _doc("rayjob.yaml", "RayJob")
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] == "/app"
