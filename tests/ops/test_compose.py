"""docker-compose.yml and the Dockerfile, validated by the real Compose v2 loader (no Docker engine)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.ops._contract import REPO_ROOT

pytestmark = pytest.mark.ops

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"


def compose(binary: Path, *args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    # No .env or COMPOSE_* variable of the developer's shell may change what is validated.
    return subprocess.run(
        [str(binary), "--project-directory", str(file.parent), "-f", str(file), *args],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture(scope="module")
def model(compose_binary: Path) -> dict[str, Any]:
    """The project as Compose normalises it (anchors merged, paths resolved, defaults filled in)."""
    result = compose(compose_binary, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def unpinned_reason(image: str) -> str | None:
    """Why an image reference is not pinned, or None when it names a fixed tag or digest."""
    if "@sha256:" in image:
        return None
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:
        return "no tag"
    if tag == "latest":
        return "the latest tag"
    if not re.search(r"\d", tag):
        return f"the moving tag {tag!r}"
    return None


def command(service: dict[str, Any]) -> str:
    return " ".join(service.get("command") or [])


def test_compose_v2_loader_accepts_the_file(compose_binary: Path) -> None:
    result = compose(compose_binary, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_loader_exit_code_reports_invalid_files(compose_binary: Path, tmp_path: Path) -> None:
    """The binary, unlike its Python wrapper, fails on an invalid file: the check above means something."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  app:\n    image: redis:7.4.1\n    depends_on: [missing]\n", encoding="utf-8"
    )
    result = compose(compose_binary, "config", "-q", file=broken)
    assert result.returncode != 0
    assert "missing" in result.stderr


def test_every_image_is_pinned(model: dict[str, Any]) -> None:
    for name, service in model["services"].items():
        assert "image" in service, name
        if "build" in service:
            # Built from this checkout: it must never be pulled in place of the build, nor be "latest".
            assert service["pull_policy"] == "build", name
            assert not service["image"].endswith(":latest"), name
            continue
        reason = unpinned_reason(service["image"])
        assert reason is None, f"{name}: {service['image']} uses {reason}"
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert froms
    for image in froms:
        assert unpinned_reason(image) is None, image


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        ("redis:7.4.1-alpine", True),
        ("prom/prometheus:v3.5.0", True),
        ("localhost:5000/app@sha256:" + "0" * 64, True),
        ("redis", False),
        ("redis:latest", False),
        ("grafana/grafana:main", False),
        ("localhost:5000/app", False),
    ],
)
def test_pin_check_recognises_tags(image: str, pinned: bool) -> None:
    assert (unpinned_reason(image) is None) == pinned


def test_services_wait_only_on_healthy_services_that_have_healthchecks(model: dict[str, Any]) -> None:
    services = model["services"]
    waited_on: set[str] = set()
    for name, service in services.items():
        for dependency, options in service.get("depends_on", {}).items():
            assert options["condition"] == "service_healthy", f"{name} -> {dependency}"
            waited_on.add(dependency)
    assert waited_on >= {"redis", "jaeger", "prometheus"}
    for name in waited_on:
        healthcheck = services[name].get("healthcheck")
        assert healthcheck, f"{name} is waited on but has no healthcheck"
        assert not healthcheck.get("disable"), name
        assert healthcheck["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_the_stack_has_every_component_of_the_issue(model: dict[str, Any]) -> None:
    services = model["services"]
    images = {name: service["image"] for name, service in services.items()}
    assert images["redis"].startswith("redis:")
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", images["jaeger"]), "Jaeger v2 all-in-one"
    assert images["prometheus"].startswith("prom/prometheus:")
    assert images["grafana"].startswith("grafana/grafana:12.")

    workers = [
        name for name, service in services.items() if command(service).startswith("asyncmq-otel worker ")
    ]
    assert len(workers) == 2
    producers = [name for name, service in services.items() if "demo --role producer" in command(service)]
    assert len(producers) == 1
    assert any(command(service).startswith("asyncmq-otel exporter ") for service in services.values())
    for name in [*workers, *producers, "exporter"]:
        assert services[name]["build"]["dockerfile"] == "Dockerfile", name
        assert "--backend redis://redis:6379/0" in command(services[name]), name
    for name in [*workers, *producers]:
        assert "--otlp-endpoint http://jaeger:4318" in command(services[name]), name
    # The exporter is the stack's queue sampler (it outlives the workers, so AsyncMQNoConsumers can fire).
    for name in workers:
        assert command(services[name]).endswith(" --queue-sampler off"), name


def test_redis_persists_with_aof(model: dict[str, Any]) -> None:
    redis = model["services"]["redis"]
    assert "--appendonly yes" in command(redis)
    assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in redis["volumes"])


def test_prometheus_keeps_exemplars_and_loads_the_rules(model: dict[str, Any]) -> None:
    prometheus = model["services"]["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    mounts = {volume["target"]: volume.get("source") for volume in prometheus["volumes"]}
    assert mounts["/etc/prometheus"] == str(REPO_ROOT / "exporters" / "prometheus")


def test_prometheus_scrapes_every_metrics_port_the_stack_opens(model: dict[str, Any]) -> None:
    """Each --metrics-addr of a service is a scrape target of prometheus.yml under the service's name."""
    config = (REPO_ROOT / "exporters" / "prometheus" / "prometheus.yml").read_text(encoding="utf-8")
    targets = set(re.findall(r'"([\w-]+:\d+)"', config))
    served = set()
    for name, service in model["services"].items():
        match = re.search(r"--metrics-addr 0\.0\.0\.0:(\d+)", command(service))
        if match:
            served.add(f"{name}:{match.group(1)}")
    assert served == targets


def test_grafana_is_provisioned_and_read_only_for_anonymous_viewers(model: dict[str, Any]) -> None:
    grafana = model["services"]["grafana"]
    environment = grafana["environment"]
    assert environment["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert environment["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    mounts = {volume["target"]: volume.get("source") for volume in grafana["volumes"]}
    provisioning = REPO_ROOT / "dashboards" / "provisioning"
    assert mounts["/etc/grafana/provisioning/datasources"] == str(provisioning / "datasources")
    assert mounts["/etc/grafana/provisioning/dashboards"] == str(provisioning / "dashboards")
    dashboards_target = next(
        target for target, source in mounts.items() if source == str(REPO_ROOT / "dashboards")
    )
    provider = (provisioning / "dashboards" / "dashboards.yaml").read_text(encoding="utf-8")
    assert f"path: {dashboards_target}\n" in provider
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_target + "/")
    assert (REPO_ROOT / "dashboards" / Path(home).name).is_file()


def test_grafana_datasources_point_at_the_compose_services(model: dict[str, Any]) -> None:
    datasources = (REPO_ROOT / "dashboards" / "provisioning" / "datasources" / "datasources.yaml").read_text(
        encoding="utf-8"
    )
    ports = {name: service.get("ports", []) for name, service in model["services"].items()}
    assert "url: http://prometheus:9090\n" in datasources
    assert any(port["target"] == 9090 for port in ports["prometheus"])
    assert "url: http://jaeger:16686\n" in datasources
    assert any(port["target"] == 16686 for port in ports["jaeger"])
    scrape_interval = re.search(
        r"scrape_interval: (\S+)",
        (REPO_ROOT / "exporters" / "prometheus" / "prometheus.yml").read_text("utf-8"),
    )
    assert scrape_interval is not None
    assert f"timeInterval: {scrape_interval.group(1)}\n" in datasources


def test_dockerfile_installs_the_package_with_redis_and_otlp_extras() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"""^RUN pip install ["']?\.\[redis,otlp\]["']?""", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+", dockerfile, re.MULTILINE), "the image must not run jobs as root"
