"""The deployment files (``deploy/compose.yaml``, ``deploy/kubernetes/``) kept honest without Docker or Kubernetes.

Neither runs on the machines this project is built on, so these checks read the files as YAML and hold them to the
code: every ``vace ...`` command line in them parses with the real CLI parser, every ``VACE_*`` variable is a
settings field and every other variable one of the standard AWS ones, the worker asks for GPUs, the probes hit the
ports the commands open, KEDA scales the worker Deployment on metrics that ``/metrics`` really serves, and the API
keys, node secret and webhook signing key reach the API nodes only, where ``--secrets-dir`` looks for them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from server.api.node_secrets import SECRET_FILE, SIGNING_KEY_FILE
from server.cli import build_parser
from server.config import Settings
from server.runtime.metrics import Metrics
from server.store.jobs import SqliteJobStore

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
AWS_VARIABLES = {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}
"""The S3 connection: only what boto3 reads by itself (the files contract of issue 16)."""


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form), which a container without its own command runs."""
    line = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("ENTRYPOINT"))
    return json.loads(line.removeprefix("ENTRYPOINT"))


def example_env() -> dict[str, str]:
    """What ``cp example.env .env`` gives compose."""
    lines = (DEPLOY / "example.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def compose() -> dict[str, Any]:
    """compose.yaml as Docker Compose reads it with the example .env: ``${NAME}``, ``${NAME:-default}`` and
    ``${NAME:?message}`` replaced, ``$$`` kept as a literal ``$``."""
    env = example_env()

    def value(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if name in env:
            return env[name]
        assert operator == ":-", f"compose.yaml needs {name}, which example.env does not set"
        return default

    text = re.sub(r"\$\{([A-Z0-9_]+)(?:(:[-?])([^}]*))?\}", value, (DEPLOY / "compose.yaml").read_text())
    return yaml.safe_load(text.replace("$$", "$"))


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object that kustomization.yaml lists, in order."""
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    return [
        doc for name in kustomization["resources"] for doc in yaml.safe_load_all((KUBERNETES / name).read_text()) if doc
    ]


def objects(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests() if doc["kind"] == kind}


def containers() -> dict[str, dict[str, Any]]:
    """The containers of every Deployment, by Deployment name (one container each)."""
    found = {}
    for name, deployment in objects("Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        found[name] = container
    return found


def parse_vace(argv: list[str]) -> argparse.Namespace:
    """A ``vace ...`` command line as the real CLI parses it (argparse exits on anything it refuses)."""
    assert argv[0] == "vace", argv
    assert not any("$" in arg for arg in argv), f"unexpanded variable in {argv}"
    try:
        return build_parser().parse_args(argv[1:])
    except SystemExit as exc:
        pytest.fail(f"vace refuses {' '.join(argv)} (exit {exc.code})")


def compose_argv(service: dict[str, Any]) -> list[str]:
    return (service.get("entrypoint") or image_entrypoint()) + service.get("command", [])


def kubernetes_argv(container: dict[str, Any]) -> list[str]:
    return (container.get("command") or image_entrypoint()) + container.get("args", [])


def check_variables(names: set[str], where: str) -> None:
    for name in names:
        if name.startswith("VACE_"):
            assert name.removeprefix("VACE_").lower() in Settings.model_fields, f"{where}: {name} is no setting"
        else:
            assert name in AWS_VARIABLES, f"{where}: {name} is neither a VACE_ setting nor a standard AWS variable"


def served_metric_names(tmp_path: Path) -> set[str]:
    """The sample names a node's /metrics renders (its real registry over a real, empty store)."""
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        text = Metrics(store).render().decode()
    finally:
        store.close()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_compose_commands_parse_and_nodes_use_the_fleet_flags() -> None:
    services = compose()["services"]
    api, worker = parse_vace(compose_argv(services["api"])), parse_vace(compose_argv(services["worker"]))
    assert api.command == "serve" and api.no_workers is True and api.host == "0.0.0.0"
    assert worker.command == "worker" and worker.weights_dir == "/weights" and worker.metrics_port
    assert api.files == worker.files and api.files.startswith("s3://")
    assert f"--bucket {urlsplit(api.files).netloc}" in " ".join(services["create-bucket"]["command"])
    published = {int(port.split(":")[1]) for port in services["api"]["ports"]}
    assert api.port in published
    assert f":{worker.metrics_port}/" in " ".join(services["worker"]["healthcheck"]["test"])


def test_compose_environment_is_settings_and_standard_aws_variables() -> None:
    services = compose()["services"]
    for name in ("api", "worker"):
        environment = services[name]["environment"]
        check_variables(set(environment), f"compose {name}")
        assert set(environment) >= AWS_VARIABLES, name
        store = urlsplit(environment["VACE_STORE"])
        database = services[store.hostname]["environment"]  # the store URL names the PostgreSQL service
        assert services[store.hostname]["image"].startswith("postgres:")
        assert store.path == f"/{database['POSTGRES_DB']}" and store.username == database["POSTGRES_USER"]
    assert "VACE_API_KEYS" in services["api"]["environment"]


def test_compose_gives_the_keys_and_fleet_secrets_to_the_api_node_only() -> None:
    spec = compose()
    api, worker = spec["services"]["api"], spec["services"]["worker"]
    targets = {mount["target"]: spec["secrets"][mount["source"]]["file"] for mount in api["secrets"]}
    assert set(targets) == {SECRET_FILE, SIGNING_KEY_FILE}
    assert all(Path(file) == Path("./secrets") / target for target, file in targets.items())
    assert api["environment"]["VACE_SECRETS_DIR"] == "/run/secrets"  # where compose mounts a service's secrets
    assert "secrets" not in worker and not {"VACE_API_KEYS", "VACE_SECRETS_DIR"} & set(worker["environment"])
    # The setup line that makes them: `vace secrets` writing into ./secrets (mounted as /out).
    (line,) = [line for line in (DEPLOY / "compose.yaml").read_text().splitlines() if " secrets /out" in line]
    command = line.lstrip("# ").split("#")[0].split()
    assert command[command.index("-v") + 1] == '"$PWD/secrets:/out"'
    assert parse_vace(["vace", *command[-2:]]).command == "secrets"


def test_compose_variables_all_come_with_the_example_env_file() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "compose.yaml").read_text()))
    assert used and used <= set(example_env()), used - set(example_env())


def test_compose_worker_reserves_gpus() -> None:
    devices = compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] and device["driver"] == "nvidia" for device in devices)


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}


def test_kubernetes_commands_parse_and_probes_hit_their_ports() -> None:
    found = containers()
    api, worker = parse_vace(kubernetes_argv(found["vace-api"])), parse_vace(kubernetes_argv(found["vace-worker"]))
    assert api.command == "serve" and api.no_workers is True
    assert worker.command == "worker" and api.files == worker.files and api.files.startswith("s3://")

    ports = {p["name"]: p["containerPort"] for p in found["vace-api"]["ports"]}
    probes = {found["vace-api"][probe]["httpGet"]["path"] for probe in ("livenessProbe", "readinessProbe")}
    assert probes == {"/health", "/ready"}
    assert all(
        ports[found["vace-api"][probe]["httpGet"]["port"]] == api.port for probe in ("livenessProbe", "readinessProbe")
    )
    service = objects("Service")["vace-api"]
    assert (
        service["spec"]["selector"].items()
        <= objects("Deployment")["vace-api"]["spec"]["template"]["metadata"]["labels"].items()
    )
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)

    worker_ports = {p["name"]: p["containerPort"] for p in found["vace-worker"]["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker_ports[found["vace-worker"][probe]["httpGet"]["port"]] == worker.metrics_port


def test_kubernetes_nodes_get_only_the_secrets_they_need() -> None:
    secrets, found = objects("Secret"), containers()
    for name, container in found.items():
        check_variables({e["name"] for e in container.get("env", [])}, name)
        for source in container.get("envFrom", []):
            check_variables(set(secrets[source["secretRef"]["name"]]["stringData"]), f"{name}'s Secret")
    for secret in secrets.values():
        assert all("CHANGE-ME" in value for key, value in secret["stringData"].items() if key != "AWS_REGION")

    def pod(name: str) -> dict[str, Any]:
        return objects("Deployment")[name]["spec"]["template"]["spec"]

    def secret_volumes(name: str) -> dict[str, dict[str, Any]]:
        return {v["name"]: v["secret"] for v in pod(name).get("volumes", []) if "secret" in v}

    # Every node: the database and the bucket; a worker nothing more (no API key, node secret or signing key).
    worker = found["vace-worker"]
    assert {s["secretRef"]["name"] for s in worker["envFrom"]} == {"vace-node"}
    assert set(secrets["vace-node"]["stringData"]) == AWS_VARIABLES | {"VACE_STORE"}
    assert not secret_volumes("vace-worker") and "env" not in worker
    # The API pods: the same, and their own Secret as owner-only files where the settings look for them.
    api = found["vace-api"]
    assert {s["secretRef"]["name"] for s in api["envFrom"]} == {"vace-node"}
    ((volume, source),) = secret_volumes("vace-api").items()
    assert source["defaultMode"] == 0o400
    assert set(secrets[source["secretName"]]["stringData"]) == {"api-keys", SECRET_FILE, SIGNING_KEY_FILE}
    (mount,) = [m for m in api["volumeMounts"] if m["name"] == volume]
    env = {e["name"]: e["value"] for e in api["env"]}
    assert mount["readOnly"] and env["VACE_SECRETS_DIR"] == mount["mountPath"]
    assert env["VACE_API_KEYS_FILE"] == f"{mount['mountPath']}/api-keys"


def test_kubernetes_worker_asks_for_a_gpu_and_the_api_does_not() -> None:
    found = containers()
    assert int(found["vace-worker"]["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in found["vace-api"].get("resources", {}).get("limits", {})


def test_kubernetes_scratch_volumes_are_bounded() -> None:
    """An emptyDir without a sizeLimit grows until the node's disk is full (upload spool, job scratch, LoRA cache);
    with one, the kubelet evicts the pod that overfills it. The worker's holds at least the LoRA cache."""
    units = {"Gi": 1024**3, "G": 1000**3, "Mi": 1024**2, "M": 1000**2}
    limits = {}
    for name, deployment in objects("Deployment").items():
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            if "emptyDir" in volume:
                quantity = str((volume["emptyDir"] or {}).get("sizeLimit", ""))
                number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups() if quantity else ("0", "")
                assert unit in units, f"{name}: emptyDir {volume['name']} has no sizeLimit"
                limits[name] = int(number) * units[unit]
    assert set(limits) == {"vace-api", "vace-worker"}
    assert limits["vace-worker"] > Settings.model_fields["lora_cache_gb"].default * 1000**3


def test_keda_scales_the_worker_deployment_on_served_metrics(tmp_path: Path) -> None:
    (scaled,) = objects("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    gpu_deployments = {name for name, c in containers().items() if "nvidia.com/gpu" in c["resources"]["limits"]}
    assert gpu_deployments == {target["name"]}
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert {"serverAddress", "query", "threshold"} <= set(trigger["metadata"])
    queried = set(re.findall(r"\bvace_[a-z_]+", trigger["metadata"]["query"]))
    assert "vace_queue_depth_by_endpoint" in queried
    assert queried <= served_metric_names(tmp_path), queried - served_metric_names(tmp_path)
    labels = set(re.findall(r"by \(([^)]*)\)", trigger["metadata"]["query"])[0].replace(" ", "").split(","))
    assert labels == {"app", "task", "priority"}  # the labels vace_queue_depth_by_endpoint carries
