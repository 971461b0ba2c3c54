"""Static checks of every recipe under cluster/ (fast: nothing is launched).

Each YAML parses; the launcher configs pass Ray's own schema; the head alone holds trial slots; no
dashboard is bound to all interfaces; no secret is embedded; no network rule is open to any address and
the launchers use the user's own security group / firewall tag (checked with Ray's own provider code);
the head and the workers get different cloud identities, whose permissions cluster/README.md lists;
every node shares the data artefacts (shared disk or --storage); the runtime env uploads the package and
nothing heavy; the scripts parse; the KubeRay job runs a shipped search space. The KubeRay manifests'
fields are checked against the CRD in test_kuberay_schema.py.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray._private.runtime_env.packaging import _dir_travel, _get_excludes
from ray.autoscaler._private.aws import config as aws_config
from ray.runtime_env import RuntimeEnv

from mdf_search.search.space import load_spec
from mdf_search.search.validate import validate_spec

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ("aws.yaml", "gcp.yaml")
GPU_TYPES = {"p4de.24xlarge", "p5.48xlarge", "a2-ultragpu-8g", "a3-highgpu-8g"}
SECRET_NAME = re.compile(r"(^|_)(TOKEN|SECRET|PASSWORD|KEY|KEY_ID)(_|$)")  # HF_TOKEN, AWS_SECRET_ACCESS_KEY
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key": re.compile(r"aws_secret_access_key\s*[:=]\s*[A-Za-z0-9/+=]{40}", re.I),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "literal password": re.compile(r"password\s*:\s*[\"']?(?!\s*$)(?!\$)[^\s#\"']+", re.I),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),
    "Slack / generic bearer": re.compile(r"\bBearer\s+[A-Za-z0-9._-]{20,}\b"),
}


def _files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.is_file())


def _yaml_files() -> list[Path]:
    return [p for p in _files() if p.suffix in (".yaml", ".yml")]


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _node_trial_slots(node_type: dict[str, Any]) -> float:
    return float(node_type.get("resources", {}).get("trial_slot", 0))


def _resources_flag(command: str) -> dict[str, float]:
    match = re.search(r"--resources[= ]'([^']*)'", command)
    return dict(json.loads(match.group(1))) if match else {}


def _cluster_schema_errors(config: Any) -> list[str]:
    """What Ray's cluster-config schema (the JSON Schema ``ray up`` checks a config against) finds wrong."""
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


def test_the_recipes_exist() -> None:
    for rel in (
        "aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "kuberay/pvc.yaml",
        "slurm/mdf_sweep.sbatch", "runtime_env.yaml", "submit.sh", "README.md", "Dockerfile",
    ):  # fmt: skip
        assert (CLUSTER / rel).is_file(), rel


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_yaml_parses_and_opens_with_its_command(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, path
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and re.search(r"ray (up|job submit)|kubectl apply", first), first


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_passes_rays_schema(name: str) -> None:
    cfg = _load(name)
    assert _cluster_schema_errors(cfg) == []
    # the cross-field rules `ray up` checks beside the schema
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert sum(t.get("min_workers", 0) for t in cfg["available_node_types"].values()) <= cfg["max_workers"]


def test_the_schema_check_finds_a_misspelt_or_mistyped_field() -> None:
    cfg = _load("aws.yaml")
    worker = next(k for k in cfg["available_node_types"] if k != cfg["head_node_type"])
    cfg["head_node_typ"] = cfg["head_node_type"]
    cfg["available_node_types"][worker]["max_workers"] = "two"
    errors = _cluster_schema_errors(cfg)
    assert any("'head_node_typ' was unexpected" in e for e in errors), errors
    assert f"available_node_types/{worker}/max_workers: 'two' is not of type 'integer'" in errors, errors


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_head_hosts_trial_slots_and_gpu_workers_have_none(name: str) -> None:
    cfg = _load(name)
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert _node_trial_slots(head) > 0
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert _resources_flag(head_start).get("trial_slot", 0) == _node_trial_slots(head)
    assert _resources_flag(" ".join(cfg["worker_start_ray_commands"])).get("trial_slot") == 0
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    gpu_workers = {
        k: v for k, v in workers.items()
        if (v["node_config"].get("InstanceType") or v["node_config"].get("machineType")) in GPU_TYPES
    }  # fmt: skip
    assert gpu_workers, f"{name}: no 8x A100/H100 worker type"
    for key, node in workers.items():
        assert "min_workers" in node and "max_workers" in node, key
        assert 0 <= node["min_workers"] <= node["max_workers"], key
        assert node.get("resources", {}).get("trial_slot") == 0, f"{key} must declare trial_slot: 0"
    head_type = head["node_config"].get("InstanceType") or head["node_config"].get("machineType")
    assert head_type not in GPU_TYPES, "the head is a CPU node"
    assert "InstanceMarketOptions" not in head["node_config"] and "scheduling" not in head["node_config"]
    spot = [k for k, v in workers.items() if "InstanceMarketOptions" in v["node_config"]
            or v["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"]  # fmt: skip
    assert spot, f"{name}: no optional spot worker type"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_cuda_torch_then_the_package_with_token_auth(name: str) -> None:
    cfg = _load(name)
    setup = "\n".join(cfg["setup_commands"])
    torch_at = setup.index("install torch --index-url https://download.pytorch.org/whl/cu")
    assert torch_at < setup.index("pip install -e ."), "CUDA torch first, then the package"
    assert cfg["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "RAY_AUTH_MODE=token" in " ".join(cfg[key]), key
    assert "--dashboard-host=127.0.0.1" in " ".join(cfg["head_start_ray_commands"])


def test_no_recipe_binds_anything_to_all_interfaces() -> None:
    for path in _files():
        text = path.read_text()
        assert "0.0.0.0" not in text, path
        assert "::/0" not in text and "[::]" not in text, path
        for value in re.findall(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?(\$\(POD_IP\)|[^\s\"',);]+)", text):
            assert value in ("127.0.0.1", "localhost", "$(POD_IP)"), f"{path}: dashboard host {value}"


def test_every_ray_head_sets_a_dashboard_host() -> None:
    heads = [p for p in _files() if re.search(r"ray start[^\n]*--head|headGroupSpec", p.read_text())]
    assert {p.relative_to(CLUSTER).as_posix() for p in heads} == {
        "aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml", "slurm/mdf_sweep.sbatch",
    }  # fmt: skip
    for path in heads:
        assert re.search(r"dashboard[-_]host", path.read_text()), (
            f"{path} starts a head without --dashboard-host"
        )


def test_no_secret_is_embedded() -> None:
    for path in _files():
        text = path.read_text()
        for what, pattern in SECRET_PATTERNS.items():
            match = pattern.search(text)
            assert match is None, f"{path}: looks like a {what}: {match.group(0)!r}"


def test_the_secret_patterns_find_each_kind_they_look_for() -> None:
    examples = {
        "AWS access key id": "AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS secret key": "aws_secret_access_key = " + "a" * 40,
        "Hugging Face token": "hf_" + "x" * 24,
        "private key": "-----BEGIN RSA PRIVATE KEY-----",
        "literal password": "password: hunter2",
        "GitHub token": "ghp_" + "y" * 36,
        "Slack / generic bearer": "Bearer " + "z" * 24,
    }
    assert examples.keys() == SECRET_PATTERNS.keys()
    for what, text in examples.items():
        assert SECRET_PATTERNS[what].search(text), what
    assert not SECRET_PATTERNS["literal password"].search("password: ${DB_PASSWORD}")


def test_secret_env_vars_come_from_secret_refs_only() -> None:
    checked = []
    for path in (CLUSTER / "kuberay").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for env in _walk_env(doc):
                if SECRET_NAME.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), (path, env)
                    checked.append(env["name"])
    assert {"HF_TOKEN", "AWS_SECRET_ACCESS_KEY"} <= set(checked), checked


def _walk_env(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "env" and isinstance(value, list):
                found += [e for e in value if isinstance(e, dict) and "name" in e]
            else:
                found += _walk_env(value)
    elif isinstance(node, list):
        for item in node:
            found += _walk_env(item)
    return found


def test_runtime_env_is_valid_and_uploads_the_package_only() -> None:
    env = _load("runtime_env.yaml")
    assert dict(RuntimeEnv(**env)) == env  # Ray's own validation of the fields keeps every one of them
    assert "working_dir" not in env, "the working dir comes from --working-dir"
    for name in ("/runs/", "/reports/", "/.venv/", "/venv/", "/data/", ".git/", "*.parquet"):
        assert name in env["excludes"], name
    assert not [k for k in env.get("env_vars", {}) if SECRET_NAME.search(k)]
    uploaded: list[Path] = []
    _dir_travel(ROOT, [_get_excludes(ROOT, env["excludes"])], uploaded.append, include_gitignore=True)
    files = {p.relative_to(ROOT).as_posix() for p in uploaded if p.is_file()}
    tracked = subprocess.run(["git", "ls-files", "mdf_search", "search_spaces"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    missing = [f for f in tracked if f not in files]
    assert not missing, f"the runtime env would leave package files out: {missing[:5]}"
    assert "pyproject.toml" in files and "cluster/runtime_env.yaml" in files
    heavy = [f for f in files if f.startswith((".venv/", "runs/", "reports/", ".git/", ".mypy_cache/"))]
    assert not heavy, heavy[:5]


@pytest.mark.parametrize("script", ["slurm/mdf_sweep.sbatch", "submit.sh"])
def test_shell_scripts_parse(script: str) -> None:
    result = subprocess.run(["bash", "-n", str(CLUSTER / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_sbatch_starts_head_and_workers_waits_runs_and_tears_down() -> None:
    text = (CLUSTER / "slurm" / "mdf_sweep.sbatch").read_text()
    assert text.startswith("#!/bin/bash\n# sbatch ")
    assert re.search(r"ray start --head --block --node-ip-address=\"\$HEAD_IP\"", text)
    assert "--dashboard-host=127.0.0.1" in text
    assert re.search(r"--resources=\"\{\\\"trial_slot\\\": \$TRIAL_SLOTS\}\"", text)
    assert 'ray start --block --address="$ADDRESS"' in text and "'{\"trial_slot\": 0}'" in text
    assert "export RAY_AUTH_MODE=token" in text
    assert 'mdf-search sweep "$SPACE" --storage "$STORAGE" --address "$ADDRESS"' in text
    assert "trap teardown EXIT" in text


def _kuberay(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((CLUSTER / "kuberay" / name).read_text()) if d]


def _cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterSpec"] if doc["kind"] == "RayJob" else doc["spec"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_gpu_workers_head_slots_and_private_dashboard(name: str) -> None:
    docs = _kuberay(name)
    ray_doc = next(d for d in docs if d["kind"] in ("RayCluster", "RayJob"))
    spec = _cluster_spec(ray_doc)
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    assert head["rayStartParams"]["dashboard-host"] == "$(POD_IP)"
    assert '\\"trial_slot\\": ' in head["rayStartParams"]["resources"]
    assert json.loads(yaml.safe_load(head["rayStartParams"]["resources"]))["trial_slot"] > 0
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert "POD_IP" in head_env
    # Token auth through KubeRay's authOptions with the user's Secret: the operator then sets RAY_AUTH_* on
    # the autoscaler sidecar too. Set by hand in the templates, they would miss the sidecar.
    assert spec["authOptions"] == {"mode": "token", "secretName": "mdf-search-ray-token"}
    assert spec["enableInTreeAutoscaling"] is True
    assert not [e for e in _walk_env(ray_doc) if e["name"].startswith("RAY_AUTH_")], "RAY_AUTH_* by hand"
    readme = (CLUSTER / "README.md").read_text()
    assert "kubectl create secret generic mdf-search-ray-token --from-file=auth_token=" in readme
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert json.loads(yaml.safe_load(group["rayStartParams"]["resources"]))["trial_slot"] == 0
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 8
    for doc in docs:
        assert doc["kind"] != "Service" or doc["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_rayjob_runs_a_shipped_space_into_object_storage() -> None:
    job = next(d for d in _kuberay("rayjob.yaml") if d["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["mdf-search", "sweep"]
    space = ROOT / argv[2]
    assert space.is_file() and space.parent == ROOT / "search_spaces", argv[2]
    assert validate_spec(load_spec(space)) == []
    assert argv[argv.index("--storage") + 1].startswith(("s3://", "gs://"))
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and "/runs/" in runtime_env["excludes"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_readme_documents_access_and_teardown() -> None:
    text = (CLUSTER / "README.md").read_text()
    for needle in ("kubectl port-forward", "ssh -L 8265:localhost:8265", "RAY_AUTH_MODE=token",
                   "ray down", "kubectl delete", "scancel", "FILL IN"):  # fmt: skip
        assert needle in text, needle


# ---- network exposure, cloud identities and shared storage of the launchers (issue 14) ----

ANY_ADDRESS = re.compile(r"0\.0\.0\.0/0|::/0")
FIREWALL_TAG = "mdf-search-ray"


def _node_configs(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v["node_config"] for k, v in cfg["available_node_types"].items()}


def test_no_recipe_opens_anything_to_any_address() -> None:
    for path in _files():
        match = ANY_ADDRESS.search(path.read_text())
        assert match is None, f"{path}: {match.group(0)} opens a port to every address"


def test_aws_nodes_use_the_users_security_group_so_ray_creates_none() -> None:
    cfg = _load("aws.yaml")
    assert "security_group" not in cfg["provider"], "a provider.security_group makes Ray create the group"
    groups = {k: n.get("SecurityGroupIds") for k, n in _node_configs(cfg).items()}
    assert all(g and all(sg.startswith("sg-") for sg in g) for g in groups.values()), groups
    assert len({tuple(g) for g in groups.values() if g}) == 1, "one group: the nodes must reach each other"
    # Ray's own bootstrap step: with SecurityGroupIds on every node type it returns without creating a group.
    before = copy.deepcopy(cfg)
    assert aws_config._configure_security_group(cfg) == before


def test_aws_without_a_named_group_ray_would_open_ssh_to_any_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # The hazard the recipe avoids, shown with Ray's own code: a node type without SecurityGroupIds gets a
    # group Ray creates, and Ray's default rules for it admit SSH from every address.
    cfg = _load("aws.yaml")
    worker = next(k for k in cfg["available_node_types"] if k != cfg["head_node_type"])
    del cfg["available_node_types"][worker]["node_config"]["SecurityGroupIds"]
    created: list[list[str]] = []

    class _Group:
        id = "sg-created-by-ray"

    def fake_upsert(config: Any, node_types: list[str]) -> dict[str, _Group]:
        created.append(list(node_types))
        return {t: _Group() for t in node_types}

    monkeypatch.setattr(aws_config, "_upsert_security_groups", fake_upsert)
    aws_config._configure_security_group(cfg)
    assert created == [[worker]]
    ssh = aws_config._create_default_ssh_inbound_rules()
    assert any(ANY_ADDRESS.search(r["CidrIp"]) for rule in ssh for r in rule["IpRanges"])


def _rays_gcp_configure_subnet() -> Any:
    """Ray's own `_configure_subnet` of its GCP provider, taken from the installed source: the module
    imports Google's client libraries at the top, which this project does not install."""
    source = (Path(ray.autoscaler.__file__).parent / "_private" / "gcp" / "config.py").read_text()
    func = next(n for n in ast.parse(source).body
                if isinstance(n, ast.FunctionDef) and n.name == "_configure_subnet")  # fmt: skip

    def _list_subnets(config: Any, compute: Any) -> Any:
        raise LookupError("Ray would pick the project's first subnetwork (usually the default network)")

    namespace: dict[str, Any] = {"copy": copy, "_list_subnets": _list_subnets}
    exec(compile(ast.Module(body=[func], type_ignores=[]), "ray-gcp-config", "exec"), namespace)
    return namespace["_configure_subnet"]


def test_gcp_nodes_use_the_users_subnetwork_and_firewall_tag() -> None:
    cfg = _load("gcp.yaml")
    for key, node in _node_configs(cfg).items():
        interfaces = node.get("networkInterfaces")
        assert interfaces and "/subnetworks/" in interfaces[0]["subnetwork"], key
        assert FIREWALL_TAG in node.get("tags", {}).get("items", []), f"{key}: no firewall tag"
    # Ray's own bootstrap step: with networkInterfaces everywhere it never looks up (or picks) a subnet.
    configure_subnet = _rays_gcp_configure_subnet()
    before = copy.deepcopy(cfg)
    assert configure_subnet(cfg, compute=None) == before
    del cfg["available_node_types"]["gpu_a100"]["node_config"]["networkInterfaces"]
    with pytest.raises(LookupError):
        configure_subnet(cfg, compute=None)


def test_readme_firewall_rules_and_security_group_are_named_and_never_open() -> None:
    text = (CLUSTER / "README.md").read_text()
    rules = re.findall(r"gcloud compute firewall-rules create (\S+)(.*?)(?:\n\n|\n```)", text, re.S)
    assert {name for name, _ in rules} >= {"mdf-search-ray-ssh", "mdf-search-ray-internal"}, rules
    for name, body in rules:
        assert f"--target-tags={FIREWALL_TAG}" in body, name
        assert "--source-ranges" in body or f"--source-tags={FIREWALL_TAG}" in body, name
    assert "aws ec2 create-security-group --group-name mdf-search-ray" in text
    assert re.search(
        r"authorize-security-group-ingress[^\n]*--protocol tcp --port 22 --cidr 203\.0\.113", text
    )
    assert re.search(r"--protocol -1 --source-group", text), "the group admits its own members"


@pytest.mark.parametrize("name", LAUNCHERS)
def test_head_and_workers_get_different_cloud_identities(name: str) -> None:
    cfg = _load(name)

    def identity(node: dict[str, Any]) -> str:
        return (
            node["IamInstanceProfile"]["Arn"] if name == "aws.yaml" else node["serviceAccounts"][0]["email"]
        )

    nodes = _node_configs(cfg)
    head = identity(nodes.pop(cfg["head_node_type"]))
    workers = {identity(n) for n in nodes.values()}
    assert len(workers) == 1 and head not in workers, (head, workers)
    assert "head" in head and "worker" in next(iter(workers))


def test_readme_lists_the_permissions_the_head_and_workers_need() -> None:
    text = (CLUSTER / "README.md").read_text()
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:DescribeInstances",
                   "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeInstanceTypes",
                   "iam:PassRole", "s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                   "roles/compute.instanceAdmin.v1", "roles/iam.serviceAccountUser",
                   "roles/storage.objectAdmin"):  # fmt: skip
        assert f"`{action}`" in text, action


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_mounts_shared_storage_and_points_the_cache_at_it(name: str) -> None:
    cfg = _load(name)
    setup = "\n".join(cfg["setup_commands"])
    fs = "nfs4 -o nfsvers=4.1" if name == "aws.yaml" else "mount -t nfs"
    assert fs in setup and re.search(r"mountpoint -q /shared \|\| sudo mount .* /shared\)", setup)
    assert "ln -sfn /shared/models /models" in setup and "ln -sfn /shared/data /data" in setup
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cfg[key])
        assert "if mountpoint -q /shared; then export MDF_SEARCH_CACHE=/shared/cache" in start, key
        assert start.index("MDF_SEARCH_CACHE") < start.index("ray start"), key


def test_sbatch_puts_the_data_cache_where_every_node_reads_it() -> None:
    text = (CLUSTER / "slurm" / "mdf_sweep.sbatch").read_text()
    export = text.index("export MDF_SEARCH_CACHE=${MDF_SEARCH_CACHE:-$HOME/.cache/mdf-search}")
    assert export < text.index('srun --nodes=1 --ntasks=1 -w "$HEAD"'), "set before any node starts Ray"
