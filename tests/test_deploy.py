"""The deployment files: docker-compose.yml is valid, has its services, and everything it refers
to exists and agrees (ports, the scrape target, the provisioned dashboard); the Dockerfile
builds from what the repository has. No image is pulled or built here."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipewarden.notifiers.config import EmailReceiver
from pipewarden.server.config import load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts (./...)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = ROOT / source
    return mounts


def test_services_and_what_they_refer_to_exist() -> None:
    doc = compose()
    services = doc["services"]
    assert set(services) == {"pipewarden", "prometheus", "grafana", "mailpit"}
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        for host in bind_mounts(service).values():
            assert host.exists(), f"{name} mounts {host}, which does not exist"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in (doc.get("volumes") or {}), f"{name}: undeclared {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
    build = services["pipewarden"]["build"]
    context = ROOT / (build if isinstance(build, str) else build["context"])
    assert (context / "Dockerfile").is_file()


def test_the_parts_agree_with_each_other() -> None:
    services = compose()["services"]
    pw = services["pipewarden"]
    config_path = bind_mounts(pw)["/etc/pipewarden/pipewarden.yaml"]
    config = load(config_path)  # Pipewarden's own validation
    assert "/etc/pipewarden/pipewarden.yaml" in pw["command"]
    http_port = config.server.http_listen.rsplit(":", 1)[1]
    grpc_port = config.server.listen.rsplit(":", 1)[1]
    assert config.server.data_dir == "/data"
    assert any(v.endswith(":/data") for v in pw["volumes"])
    assert {f"{http_port}:{http_port}", f"{grpc_port}:{grpc_port}"} <= set(pw["ports"])
    # Email goes to the SMTP catcher.
    mail = next(r for r in config.receivers if isinstance(r, EmailReceiver))
    assert mail.smtp_host == "mailpit"
    assert f"{mail.smtp_port}:{mail.smtp_port}" in services["mailpit"]["ports"]
    # Prometheus scrapes Pipewarden's HTTP port.
    prometheus = bind_mounts(services["prometheus"])["/etc/prometheus/prometheus.yml"]
    scrape = yaml.safe_load(prometheus.read_text())["scrape_configs"][0]
    assert scrape["static_configs"][0]["targets"] == [f"pipewarden:{http_port}"]
    assert scrape["metrics_path"] == "/metrics"
    # Grafana: the data source is that Prometheus, the dashboard is where the provider looks.
    grafana = bind_mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load((provisioning / "dashboards" / "pipewarden.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    dashboards = grafana[path]
    dashboard = json.loads((dashboards / "pipewarden.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == {uid}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/pipewarden.json"


def test_dockerfile_is_small_unprivileged_and_copies_what_exists() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["python:3.11-slim", "python:3.11-slim"]
    assert re.search(r"^USER pipewarden$", text, re.M)
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
    assert "9095/readyz" in text


def test_docker_compose_config_when_docker_is_there() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed: checked by parsing the file above")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        pytest.skip("docker has no compose plugin: checked by parsing the file above")
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
