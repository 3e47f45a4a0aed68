"""The deployment files under deploy/ agree with the code and with each other.

Names of settings, the rendered Kubernetes manifests, the compose, OpenFaaS and Cloud Run
files, and, end to end, the CPU image's command run here exactly as the image runs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from whisperd.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCS = REPO / "docs" / "deploy.md"
JFK = Path(__file__).resolve().parents[2] / "shared" / "audio" / "jfk.flac"
OVERLAYS = sorted(p for p in (DEPLOY / "k8s" / "overlays").iterdir() if p.is_dir())
SETTING = re.compile(r"\bWHISPERD_[A-Z0-9_]*[A-Z0-9]")

Manifest = dict[str, Any]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _env_list(container: Manifest) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


# --- settings named in the deployment files ------------------------------------------


def test_every_whisperd_variable_is_a_setting() -> None:
    files = [p for p in sorted(DEPLOY.rglob("*")) if p.is_file()] + [DOCS]
    fields = set(Settings.model_fields)
    unknown = {}
    for path in files:
        names = set(SETTING.findall(path.read_text(encoding="utf-8", errors="replace")))
        bad = sorted(n for n in names if n.removeprefix("WHISPERD_").lower() not in fields)
        if bad:
            unknown[str(path.relative_to(REPO))] = bad
    assert not unknown, f"not fields of whisperd.settings.Settings: {unknown}"


# --- Kubernetes -----------------------------------------------------------------------


def _render(overlay: Path) -> list[Manifest]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed to render deploy/k8s (it is not skipped)"
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _one(objects: list[Manifest], kind: str, name: str) -> Manifest:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _config(objects: list[Manifest]) -> dict[str, str]:
    maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


BASE_KINDS = {
    "Namespace",
    "ConfigMap",
    "Service",
    "Deployment",
    "StatefulSet",
    "PodDisruptionBudget",
    "NetworkPolicy",
}
EXPECTED_KINDS = {
    "cpu": BASE_KINDS | {"HorizontalPodAutoscaler"},
    "gpu": BASE_KINDS | {"RuntimeClass", "ScaledObject"},
}


def test_the_overlays_are_the_expected_ones() -> None:
    assert [p.name for p in OVERLAYS] == sorted(EXPECTED_KINDS)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_renders_with_the_expected_kinds(overlay: Path) -> None:
    objects = _render(overlay)
    assert {o["kind"] for o in objects} == EXPECTED_KINDS[overlay.name]
    for obj in objects:
        if obj["kind"] not in ("Namespace", "RuntimeClass"):
            assert obj["metadata"].get("namespace") == "whisperd", obj["metadata"]["name"]
    settings = _config(objects)
    # The settings the pods get are valid settings.
    Settings.model_validate({k.removeprefix("WHISPERD_").lower(): v for k, v in settings.items()})


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_pods_are_locked_down(overlay: Path) -> None:
    objects = _render(overlay)
    for obj in objects:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        # Service links would set WHISPERD_PORT=tcp://... from the Service "whisperd".
        assert pod["enableServiceLinks"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert container["resources"]["requests"] and container["resources"]["limits"]
        if obj["metadata"]["name"].startswith("whisperd-redis"):
            continue
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "emptyDir" in volumes[mounts["/data"]]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_api_drains_within_its_grace_period(overlay: Path) -> None:
    objects = _render(overlay)
    drain = float(_config(objects)["WHISPERD_DRAIN_TIMEOUT"])
    api = _one(objects, "Deployment", "whisperd-api")["spec"]["template"]["spec"]
    container = api["containers"][0]
    assert container["args"] == ["serve"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    # preStop sleep + drain + a 10 s margin for the process to exit.
    assert api["terminationGracePeriodSeconds"] == int(sleep[1]) + drain + 10
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert _env_list(container)["WHISPERD_QUEUE_CONSUMERS"] == "false"
    worker = _one(objects, "Deployment", "whisperd-worker")["spec"]["template"]["spec"]
    assert worker["containers"][0]["args"] == ["worker"]
    assert worker["terminationGracePeriodSeconds"] >= drain + 10
    selector = _one(objects, "Deployment", "whisperd-api")["spec"]["selector"]["matchLabels"]
    assert _one(objects, "Service", "whisperd")["spec"]["selector"] == selector


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_redis_keeps_an_append_only_file_on_a_volume(overlay: Path) -> None:
    objects = _render(overlay)
    redis = _one(objects, "StatefulSet", "whisperd-redis")
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    headless = _one(objects, "Service", "whisperd-redis")
    assert headless["spec"]["clusterIP"] == "None"
    assert redis["spec"]["serviceName"] == "whisperd-redis"
    assert _config(objects)["WHISPERD_REDIS_URL"].startswith(
        "redis://whisperd-redis-0.whisperd-redis:6379"
    )


def test_cpu_overlay() -> None:
    objects = _render(DEPLOY / "k8s" / "overlays" / "cpu")
    for name in ("whisperd-api", "whisperd-worker"):
        pod = _one(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == "ghcr.io/OWNER/whisperd:latest"
        hpa = _one(objects, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
    config = _config(objects)
    assert config["WHISPERD_DEVICE"] == "cpu"
    cpu_limit = int(pod["containers"][0]["resources"]["limits"]["cpu"])
    assert int(config["WHISPERD_CPU_THREADS"]) == cpu_limit


def test_gpu_overlay() -> None:
    objects = _render(DEPLOY / "k8s" / "overlays" / "gpu")
    runtime = _one(objects, "RuntimeClass", "nvidia")
    assert runtime["handler"] == "nvidia"
    for name in ("whisperd-api", "whisperd-worker"):
        pod = _one(objects, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["runtimeClassName"] == "nvidia"
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        container = pod["containers"][0]
        assert container["image"] == "ghcr.io/OWNER/whisperd:latest-cuda"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = _config(objects)
    assert config["WHISPERD_DEVICE"] == "cuda"
    assert config["WHISPERD_COMPUTE_TYPE"] == "float16"


def test_keda_scales_the_workers_on_the_job_queue() -> None:
    objects = _render(DEPLOY / "k8s" / "overlays" / "gpu")
    scaled = _one(objects, "ScaledObject", "whisperd-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = _one(objects, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert target["spec"]["template"]["spec"]["containers"][0]["args"] == ["worker"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "dramatiq:transcribe"
    # The same Redis as whisperd's, fully qualified for KEDA's operator namespace.
    redis_url = httpx.URL(_config(objects)["WHISPERD_REDIS_URL"])
    host, port = trigger["metadata"]["address"].rsplit(":", 1)
    assert host == f"{redis_url.host}.whisperd.svc.cluster.local"
    assert int(port) == redis_url.port
    assert trigger["metadata"]["databaseIndex"] == redis_url.path.strip("/")
    # Nothing else scales the workers.
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


# --- compose, OpenFaaS, Cloud Run -------------------------------------------------------


def test_compose_single_machine() -> None:
    compose = _load_yaml(DEPLOY / "docker" / "compose.yaml")
    [service] = compose["services"].values()
    assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert service["read_only"] is True
    assert service["tmpfs"] == ["/tmp"]
    assert any(v.endswith(":/data") for v in service["volumes"])


def test_compose_distributed() -> None:
    compose = _load_yaml(DEPLOY / "docker" / "compose.distributed.yaml")
    services = compose["services"]
    redis = services["redis"]
    assert redis["image"].startswith("redis:7")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    # Debian's redis-server (Dockerfile.redis) has protected mode on, which refuses the API
    # and the workers on the project's network.
    assert redis["command"][redis["command"].index("--protected-mode") + 1] == "no"
    api, worker = services["api"], services["worker"]
    assert api["command"] == ["serve"]
    assert api["environment"]["WHISPERD_QUEUE_CONSUMERS"] == "false"
    assert worker["command"] == ["worker"]
    for service in (api, worker):
        assert service["environment"]["WHISPERD_REDIS_URL"] == "redis://redis:6379/0"
        assert service["read_only"] is True
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia"
        assert device["capabilities"] == ["gpu"]


def test_openfaas_stack() -> None:
    stack = _load_yaml(DEPLOY / "openfaas" / "stack.yaml")
    function = stack["functions"]["whisper"]
    assert function["lang"] == "dockerfile"
    assert function["annotations"]["com.openfaas.profile"] == "gpu"
    assert function["readonly_root_filesystem"] is True
    env = function["environment"]
    for timeout in ("read_timeout", "write_timeout", "exec_timeout"):
        assert env[timeout] == "10m"
    # Only /tmp is writable with a read-only root filesystem.
    assert env["WHISPERD_DATA_DIR"].startswith("/tmp/")
    # faas-netes gives the pod write_timeout + 2 s after SIGTERM.
    assert float(env["WHISPERD_DRAIN_TIMEOUT"]) < 600 + 2
    assert float(env["WHISPERD_REQUEST_TIMEOUT"]) < 600
    assert int(env["max_inflight"]) == int(env["WHISPERD_MAX_ACTIVE"]) + int(
        env["WHISPERD_MAX_QUEUE"]
    )
    profile = _load_yaml(DEPLOY / "openfaas" / "profile.yaml")
    assert (profile["apiVersion"], profile["kind"]) == ("openfaas.com/v1", "Profile")
    assert profile["metadata"]["name"] == "gpu"
    assert profile["spec"]["runtimeClassName"] == "nvidia"


def test_cloud_run_service() -> None:
    service = _load_yaml(DEPLOY / "cloudrun" / "service.yaml")
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/minScale"] == "0"
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    spec = template["spec"]
    assert spec["nodeSelector"]["run.googleapis.com/accelerator"] == "nvidia-l4"
    [container] = spec["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    env = _env_list(container)
    assert spec["containerConcurrency"] == int(env["WHISPERD_MAX_ACTIVE"]) + int(
        env["WHISPERD_MAX_QUEUE"]
    )
    assert spec["timeoutSeconds"] > float(env["WHISPERD_REQUEST_TIMEOUT"])
    # Cloud Run kills an instance 10 s after SIGTERM.
    assert float(env["WHISPERD_DRAIN_TIMEOUT"]) < 10
    probe = container["startupProbe"]
    assert probe["httpGet"]["path"] == "/readyz"
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 240


def test_redis_image_runs_as_the_compose_file_runs_redis_7() -> None:
    text = (DEPLOY / "docker" / "Dockerfile.redis").read_text(encoding="utf-8")
    # A numeric user, as in redis:7, and the append-only file written to the /data volume.
    assert re.search(r"^USER 999:999$", text, re.MULTILINE)
    assert re.search(r"^WORKDIR /data$", text, re.MULTILINE)
    assert re.search(r'^VOLUME \["/data"\]$', text, re.MULTILINE)
    compose = _load_yaml(DEPLOY / "docker" / "compose.distributed.yaml")
    assert compose["services"]["redis"]["command"][0] == "redis-server"


# --- the image, built and run by deploy/smoke.sh --------------------------------------


def test_ci_builds_and_runs_the_image() -> None:
    steps = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line.strip() for line in steps if line.strip() and not line.startswith("#")]
    # the smoke test runs beside the install and the static checks; pytest waits for all
    smoke = next(i for i, c in enumerate(commands) if "bash deploy/smoke.sh" in c)
    waited = next(i for i, c in enumerate(commands) if c.startswith('wait "${smoke}"'))
    pytest = commands.index("pytest")
    assert smoke < waited < pytest and commands.index("bash deploy/check.sh") < pytest


def test_docs_build_without_a_registry_as_the_smoke_test_does() -> None:
    smoke = (DEPLOY / "smoke.sh").read_text(encoding="utf-8")
    docs = DOCS.read_text(encoding="utf-8")
    for flag in ("--isolation chroot", "--network host", "--format docker"):
        assert flag in smoke, f"deploy/smoke.sh builds without {flag}"
        assert flag in docs, f"docs/deploy.md builds without {flag}"
    assert "bash deploy/docker/base.sh" in smoke and "bash deploy/docker/base.sh" in docs


# --- the image's command, run here ----------------------------------------------------


def _dockerfile_final_stage(path: Path) -> tuple[dict[str, str], list[str]]:
    """The final stage's ENV (ARG defaults substituted) and its ENTRYPOINT + CMD."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", path.read_text(encoding="utf-8"))
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    start = max(i for i, ln in enumerate(lines) if ln.upper().startswith("FROM "))
    args: dict[str, str] = {}
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    cmd: list[str] = []

    def expand(value: str) -> str:
        return re.sub(r"\$\{?(\w+)\}?", lambda m: {**args, **env}.get(m[1], m[0]), value)

    for line in lines[start + 1 :]:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = shlex.split(default)[0] if default else ""
        elif instruction == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = expand(value)
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif instruction == "CMD":
            cmd = json.loads(rest)
    return env, entrypoint + cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-4000:]


@pytest.mark.slow
@pytest.mark.server
def test_cpu_image_entrypoint_serves_and_drains(tmp_path: Path) -> None:
    image_env, command = _dockerfile_final_stage(DEPLOY / "docker" / "Dockerfile")
    # tini is the image's PID 1 (it reaps the embedded redis-server); the rest is whisperd's.
    if command[:2] == ["tini", "--"]:
        command = command[2:]
    assert command == ["whisperd", "serve"]
    assert image_env["WHISPERD_PORT"] == "8080" and image_env["WHISPERD_HOST"] == "0.0.0.0"
    executable = Path(sys.executable).with_name("whisperd")
    assert executable.is_file(), f"{executable}: install whisperd into this environment"

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHISPERD_")}
    env.update({k: v for k, v in image_env.items() if k != "PATH"})
    env.update(
        WHISPERD_HOST="127.0.0.1",
        WHISPERD_PORT=str(port),
        WHISPERD_DATA_DIR=str(tmp_path / "data"),
        WHISPERD_TMP_DIR=str(tmp_path / "tmp"),
        WHISPERD_MODEL_CACHE_DIR=str(tmp_path / "models"),
    )
    if "HF_HOME" in env:
        env["HF_HOME"] = str(tmp_path / "hf")
    for name in ("data", "tmp", "models"):
        (tmp_path / name).mkdir()
    log = tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(executable), *command[1:]], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, f"whisperd exited {proc.returncode}:\n{_tail(log)}"
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"not ready in 90 s:\n{_tail(log)}"
                time.sleep(0.2)

            with JFK.open("rb") as audio:
                response = client.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("jfk.flac", audio, "audio/flac")},
                    data={"model": "whisper-1"},
                    timeout=120,
                )
            assert response.status_code == 200, response.text
            assert "ask not what your country" in response.json()["text"].lower()

        proc.send_signal(signal.SIGTERM)
        drain = float(image_env.get("WHISPERD_DRAIN_TIMEOUT", "30"))
        returncode = proc.wait(timeout=drain + 30)
        assert returncode == 0, f"exit status {returncode} after SIGTERM:\n{_tail(log)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
