"""The cluster manifests in infra/ agree with each other and with the CLI and presets they run.

Nothing here talks to a cluster: the manifests are parsed, their required fields checked, and
every `pyratok ...` command they (and infra's READMEs) tell a user to type is parsed by the
real CLI, down to the arguments passed through `pyratok submit STAGE -- ...`.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml

from pyratok.cli.main import app
from pyratok.config import load
from pyratok.workflow.submit import resolve_command

INFRA = Path(__file__).resolve().parents[2] / "infra"
IMAGE_RE = re.compile(r"^ghcr\.io/[\w.-]+/pyratok:[\w.-]+$")


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in documents(path)}


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def parse_cli(argv: list[str]):
    """Parse ``argv`` with the real CLI (no command runs); returns the leaf command's context."""
    command, name, rest, parent = typer.main.get_command(app), "pyratok", list(argv), None
    while hasattr(command, "commands") and rest and rest[0] in command.commands:  # groups: options before the command
        parent = command.make_context(name, [], parent=parent, resilient_parsing=True)
        name = rest.pop(0)
        command = command.commands[name]
    # a group's own option (pyratok --version) parses without running its eager callback
    ctx = command.make_context(name, rest, parent=parent, resilient_parsing=hasattr(command, "commands"))
    if name == "submit":  # what follows `--` must parse as the submitted stage's own arguments
        words, stage_args, _ = resolve_command(ctx.params["stage"], list(ctx.args))
        return parse_cli([*words, *stage_args])
    return ctx


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return by_kind(INFRA / "kuberay" / "raycluster.yaml")["RayCluster"]


@pytest.fixture(scope="module")
def images(raycluster) -> set[str]:
    """Every image an infra manifest runs that is ours."""
    found = {c["image"] for c in containers(raycluster["spec"]["headGroupSpec"]["template"])}
    for group in raycluster["spec"]["workerGroupSpecs"]:
        found |= {c["image"] for c in containers(group["template"])}
    job = by_kind(INFRA / "kuberay" / "rayjob.yaml")["RayJob"]
    found |= {c["image"] for c in containers(job["spec"]["submitterPodTemplate"])}
    found.add(documents(INFRA / "cluster-launcher" / "aws.yaml")[0]["docker"]["image"])
    found.add(by_kind(INFRA / "mlflow" / "mlflow-server.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"])
    return found


def test_every_manifest_parses():
    files = sorted(INFRA.rglob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        assert documents(path), f"{path} is empty"
    for path in sorted(INFRA.rglob("*.json")):
        json.loads(path.read_text())


def test_one_image_everywhere_and_the_dockerfile_builds_it(images):
    assert len(images) == 1, images
    (image,) = images
    assert IMAGE_RE.match(image)
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"-t {image} " in dockerfile
    ray_version = re.search(r"FROM rayproject/ray:([\d.]+)-", dockerfile).group(1)
    import ray

    # The cluster runs the Ray the client talks to (Jobs API and token auth change across versions).
    assert ray_version == ray.__version__


def test_raycluster_has_the_paper_gpus_a_cpu_group_and_token_auth(raycluster):
    import ray

    spec = raycluster["spec"]
    assert raycluster["apiVersion"] == "ray.io/v1" and spec["rayVersion"] == ray.__version__
    assert spec["authOptions"]["mode"] == "token"
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head schedules no work
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = [g for g in groups.values() if "num-gpus" in g["rayStartParams"]]
    cpu = [g for g in groups.values() if "num-gpus" not in g["rayStartParams"]]
    assert gpu and cpu, "a GPU group for caption/training and a CPU group for ingest"
    total = sum(int(g["replicas"]) * int(g["rayStartParams"]["num-gpus"]) for g in gpu)
    assert total == 128 == load("paper").train.scaling.num_workers
    for g in gpu:
        limits = containers(g["template"])[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == int(g["rayStartParams"]["num-gpus"])
        assert int(g["minReplicas"]) == int(g["replicas"])  # a training gang must not be scaled away
        assert int(limits["cpu"]) >= int(g["rayStartParams"]["num-gpus"]) * load("paper").train.scaling.cpus_per_worker


def test_pods_read_settings_from_the_configmap_and_never_hold_credentials(raycluster):
    configmap = by_kind(INFRA / "kuberay" / "pyratok-env.yaml")["ConfigMap"]
    name, data = configmap["metadata"]["name"], configmap["data"]
    templates = [raycluster["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in raycluster["spec"]["workerGroupSpecs"]]
    templates.append(by_kind(INFRA / "kuberay" / "rayjob.yaml")["RayJob"]["spec"]["submitterPodTemplate"])
    for template in templates:
        for container in containers(template):
            assert {"configMapRef": {"name": name}} in container["envFrom"]
    assert not [k for k in data if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", k)], data
    # Names the code actually reads.
    assert {"MLFLOW_TRACKING_URI", "PYRATOK_CONFIG_DIR", "AWS_REGION"} <= set(data)
    repo_text = "\n".join(p.read_text() for p in (INFRA.parent / "pyratok").rglob("*.py"))
    assert "PYRATOK_CONFIG_DIR" in repo_text
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert f"PYRATOK_CONFIG_DIR={data['PYRATOK_CONFIG_DIR']}" in dockerfile


def test_every_yaml_keeps_secrets_out_of_literal_values():
    for path in INFRA.rglob("*.yaml"):
        for doc in documents(path):
            for key, value in _walk(doc):
                if re.search(r"(?i)secret_access_key|password|auth_token", key) and isinstance(value, str):
                    pytest.fail(f"{path}: {key} holds a literal value")


def _walk(node, key=""):
    if isinstance(node, dict):
        if "name" in node and "value" in node:  # env entries: {name: X, value: literal}
            yield str(node["name"]), node["value"]
        for k, v in node.items():
            yield from _walk(v, str(k))
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)
    else:
        yield key, node


def test_rayjob_entrypoint_parses_with_the_cli_and_its_preset_resolves():
    job = by_kind(INFRA / "kuberay" / "rayjob.yaml")["RayJob"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pyratok.cli.main"]
    ctx = parse_cli(argv[3:])
    assert ctx.command_path.endswith("pipeline run")
    cfg = load(ctx.params["config"])
    assert cfg.pipeline.root and cfg.pipeline.root.startswith("s3://")  # state outlives the cluster
    assert not cfg.pipeline.sample_data and cfg.ingest.inputs
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == by_kind(INFRA / "kuberay" / "raycluster.yaml")["RayCluster"]["metadata"]["name"]


def test_cluster_launcher_has_the_paper_gpus():
    cluster = documents(INFRA / "cluster-launcher" / "aws.yaml")[0]
    assert cluster["provider"]["type"] == "aws"
    nodes = cluster["available_node_types"]
    assert cluster["head_node_type"] in nodes and nodes[cluster["head_node_type"]]["resources"]["CPU"] == 0
    gpu = [n for n in nodes.values() if n["resources"].get("GPU")]
    assert sum(n["min_workers"] * n["resources"]["GPU"] for n in gpu) == 128
    assert all(n["node_config"]["InstanceType"].startswith("p4d") for n in gpu)
    assert cluster["max_workers"] >= sum(n.get("max_workers", 0) for k, n in nodes.items() if k != cluster["head_node_type"])


def test_mlflow_server_uses_postgres_and_s3_with_the_password_in_a_secret():
    server = by_kind(INFRA / "mlflow" / "mlflow-server.yaml")
    container = server["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(container["args"])
    assert "--artifacts-destination=s3://" in args and "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in args
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]
    assert server["Service"]["spec"]["ports"][0]["port"] == 5000
    configmap = by_kind(INFRA / "kuberay" / "pyratok-env.yaml")["ConfigMap"]
    name, namespace = server["Service"]["metadata"]["name"], server["Service"]["metadata"]["namespace"]
    assert configmap["data"]["MLFLOW_TRACKING_URI"] == f"http://{name}.{namespace}.svc.cluster.local:5000"
    postgres = by_kind(INFRA / "mlflow" / "postgres.yaml")
    assert postgres["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("postgres:")
    # psycopg2 (the PostgreSQL driver mlflow needs) is in the image through the `cluster` extra.
    assert '".[cluster]"' in (INFRA / "docker" / "Dockerfile").read_text()
    assert "psycopg2" in (INFRA.parent / "pyproject.toml").read_text()


@pytest.mark.parametrize("name", ["zero2-bf16", "zero3-bf16", "zero2-cpu"])
def test_deepspeed_configs_leave_the_batch_to_the_train_config(name):
    ds = json.loads((INFRA / "deepspeed" / f"{name}.json").read_text())
    assert ds["zero_optimization"]["stage"] == int(name[4])
    assert ds.get("bf16", {}).get("enabled", False) == name.endswith("bf16")
    assert ds["train_micro_batch_size_per_gpu"] == "auto"  # one source of truth: train.stages.stageN.batch_size


@pytest.mark.parametrize("preset", ["cluster", "paper"])
def test_presets_point_at_deepspeed_configs_that_exist(preset):
    cfg = load(preset)
    assert (INFRA.parent / cfg.train.strategy.deepspeed_config).is_file()


def documented_commands() -> list[tuple[str, list[str]]]:
    """Every `pyratok ...` line in the READMEs' bash blocks and the manifests' comments."""
    found = []
    for path in [INFRA.parent / "README.md", *sorted(INFRA.rglob("*"))]:
        if path.suffix == ".md":
            blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
            lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
        elif path.suffix == ".yaml":
            lines = [ln.lstrip("# ") for ln in path.read_text().splitlines() if ln.lstrip().startswith("#")]
        else:
            continue
        for line in lines:
            line = line.split(" # ")[0].split("&&")[-1].strip()
            line = re.sub(r"<[^>]+>", "PLACEHOLDER", line).replace("...", "PLACEHOLDER")
            if line.startswith("pyratok ") or line.startswith("python -m pyratok.cli.main "):
                argv = shlex.split(line)
                found.append((f"{path.relative_to(INFRA.parent)}: {line}", argv[3:] if argv[0] == "python" else argv[1:]))
    return found


@pytest.mark.parametrize(("where", "argv"), documented_commands(), ids=lambda v: v if isinstance(v, str) else None)
def test_documented_commands_parse_with_the_cli(where, argv):
    ctx = parse_cli(argv)
    config = ctx.params.get("config")
    if config:
        load(config)  # the preset it names exists and validates


def test_documented_commands_cover_the_cluster_paths():
    text = " ".join(w for w, _ in documented_commands())
    for command in ("pyratok submit pipeline", "pyratok submit train", "pyratok jobs logs", "pyratok dev up", "pyratok submit ingest", "pyratok train --stage 3"):
        assert command in text, command
