"""The deployment files (deploy/kubernetes/, deploy/prometheus/, deploy/grafana/,
docker-compose.yml) parse, and name only what the package has: subcommands, settings, probe
paths, ports and metrics. A renamed setting or metric fails here, not in an operator's cluster."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from receipt_streams.config import Settings
from receipt_streams.entrypoints.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "receipt-streams.json"
COMPOSE = ROOT / "docker-compose.yml"

METRIC = re.compile(r"\breceipt_streams_[a-z0-9_]+")
REGISTERED = re.compile(r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum)\(\s*\"([a-zA-Z0-9_:]+)\"")


def manifests() -> list[Path]:
    return sorted(KUBERNETES.rglob("*.yaml"))


def k8s_docs() -> list[dict[str, Any]]:
    return [
        doc
        for path in manifests()
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def workloads() -> Iterator[dict[str, Any]]:
    for doc in k8s_docs():
        if doc["kind"] in ("Deployment", "StatefulSet"):
            yield doc


def containers() -> Iterator[dict[str, Any]]:
    for doc in workloads():
        yield from doc["spec"]["template"]["spec"]["containers"]


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def setting_names() -> set[str]:
    return {f"RECEIPT_STREAMS_{name.upper()}" for name in Settings.model_fields} | {
        "KAFKA_BOOTSTRAP_SERVERS"
    }


def registered_metrics() -> set[str]:
    """Every name the package registers with prometheus_client, as exposed: counters gain
    `_total` (and `_created`), histograms and summaries `_bucket`, `_count`, `_sum`."""
    names: set[str] = set()
    for path in (ROOT / "receipt_streams").rglob("*.py"):
        for name in REGISTERED.findall(path.read_text()):
            base = name.removesuffix("_total")
            names |= {name, base} | {
                base + s for s in ("_total", "_created", "_bucket", "_count", "_sum")
            }
    return names


def web_port() -> int:
    return Settings.model_fields["web_port"].default


# --- parsing ---------------------------------------------------------------------------


def test_every_manifest_parses_and_names_its_kind() -> None:
    assert {p.name for p in manifests()} >= {
        "kustomization.yaml",
        "configmap.yaml",
        "workers.yaml",
        "api.yaml",
        "relays.yaml",
    }
    kinds = {doc["kind"] for doc in k8s_docs()}
    assert kinds >= {
        "ConfigMap",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
    }


def test_kustomizations_list_existing_files() -> None:
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), (kustomization, resource)
    listed = {
        (k.parent / r).resolve()
        for k in KUBERNETES.rglob("kustomization.yaml")
        for r in yaml.safe_load(k.read_text())["resources"]
    }
    unlisted = [
        p for p in manifests() if p.name != "kustomization.yaml" and p.resolve() not in listed
    ]
    assert not unlisted


def test_compose_and_prometheus_files_parse() -> None:
    services = compose()["services"]
    assert {"kafka", "worker-1", "worker-2", "relays", "api", "prometheus"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for path in PROMETHEUS.glob("*.yml"):
        assert yaml.safe_load(path.read_text())


def test_grafana_dashboard_parses_and_every_panel_queries() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "receipt-streams"
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]


# --- names the package must have -------------------------------------------------------


def test_commands_are_subcommands() -> None:
    known = subcommands()
    named = []
    for container in containers():
        assert container["command"][0] == "receipt-streams", container["name"]
        named.append(container["command"][1])
    for service in compose()["services"].values():
        if "build" in service:  # our image: ENTRYPOINT receipt-streams
            named.append(service["command"][0])
    assert named and set(named) <= known, set(named) - known
    assert {"worker", "api", "relays"} <= set(named)


def _k8s_env() -> Iterator[str]:
    for doc in k8s_docs():
        if doc["kind"] == "ConfigMap":
            yield from doc["data"]
    for container in containers():
        yield from (e["name"] for e in container.get("env", []))


def _compose_env() -> Iterator[str]:
    for service in compose()["services"].values():
        if "build" in service:
            yield from service["environment"]


def test_every_setting_they_set_exists() -> None:
    named = set(_k8s_env()) | set(_compose_env())
    ours = {n for n in named if n.startswith("RECEIPT_STREAMS_") or n == "KAFKA_BOOTSTRAP_SERVERS"}
    assert ours, "no setting found"
    assert ours <= setting_names(), ours - setting_names()


def test_roles_are_split() -> None:
    """Workers fold only; the API and relays run in processes of their own."""
    for doc in workloads():
        command = doc["spec"]["template"]["spec"]["containers"][0]["command"][1]
        env = {
            e["name"]: e.get("value")
            for e in doc["spec"]["template"]["spec"]["containers"][0].get("env", [])
        }
        if command == "worker":
            assert doc["kind"] == "StatefulSet"
            assert env["RECEIPT_STREAMS_SERVE_API"] == "false"
            assert env["RECEIPT_STREAMS_RUN_RELAYS"] == "false"
        else:
            assert doc["kind"] == "Deployment"
    for name in ("worker-1", "worker-2"):
        env = compose()["services"][name]["environment"]
        assert env["RECEIPT_STREAMS_SERVE_API"] == env["RECEIPT_STREAMS_RUN_RELAYS"] == "false"


def test_worker_state_is_on_a_volume_per_pod() -> None:
    (sts,) = (d for d in k8s_docs() if d["kind"] == "StatefulSet")
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["RECEIPT_STREAMS_DATA_DIR"]] in claims
    services = compose()["services"]
    volumes = [s.get("volumes", []) for s in services.values()]
    mounted = [v for vs in volumes for v in vs if str(v).endswith(":/data")]
    assert len(set(mounted)) == len(mounted) == 3  # a volume each: two workers, the API


def test_api_processes_keep_their_view_on_disk() -> None:
    """Memory bounded whatever the key count: the API's view in RocksDB, on a volume."""
    (deployment,) = (
        d
        for d in k8s_docs()
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api")
    )
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RECEIPT_STREAMS_READ_STORE"] == "rocksdb"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["RECEIPT_STREAMS_DATA_DIR"]] in {v["name"] for v in pod["volumes"]}
    api_env = compose()["services"]["api"]["environment"]
    assert api_env["RECEIPT_STREAMS_READ_STORE"] == "rocksdb"


def listener_paths() -> tuple[set[str], set[str]]:
    """The GET paths the client listener and the admin listener serve."""
    from tests.adapters.api.inprocess import make_api

    api, _ = make_api(Settings(server_name="hs1", read_store="memory"))

    def paths(app: web.Application) -> set[str]:
        return {r.canonical for r in app.router.resources()}

    return paths(api.app()), paths(api.admin_app())


def admin_port() -> int:
    return Settings.model_fields["admin_port"].default


def test_probes_on_the_client_port_and_metrics_on_the_admin_listener() -> None:
    """The kubelet probes the client port (status only); Prometheus scrapes the admin
    listener, which therefore listens beyond loopback there, in no Service."""
    client, admin = listener_paths()
    assert {"/healthz", "/readyz"} <= client and "/metrics" not in client
    assert {"/healthz", "/readyz", "/metrics"} <= admin
    for container in containers():
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": web_port()}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": web_port()}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": web_port(), "admin": admin_port()}
        assert container["resources"]["requests"] and container["resources"]["limits"]
    for doc in workloads():
        annotations = doc["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(admin_port())
        assert annotations["prometheus.io/path"] in admin
    for doc in k8s_docs():
        if doc["kind"] == "PodMonitor":
            endpoints = doc["spec"]["podMetricsEndpoints"]
            assert {(e["port"], e["path"]) for e in endpoints} == {("admin", "/metrics")}
        if doc["kind"] == "Service":
            assert {p["port"] for p in doc["spec"]["ports"]} == {web_port()}
        if doc["kind"] == "ConfigMap":
            assert doc["data"]["RECEIPT_STREAMS_ADMIN_HOST"] == "0.0.0.0"
            assert doc["data"]["RECEIPT_STREAMS_ADMIN_PORT"] == str(admin_port())
    scrape = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"]
    services = compose()["services"]
    for job in scrape:
        assert job["metrics_path"] in admin
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert int(port) == admin_port() and host in services
                env = services[host]["environment"]
                assert env["RECEIPT_STREAMS_ADMIN_HOST"] == "0.0.0.0"
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert not [p for p in published if str(p).endswith(f":{admin_port()}")], "never published"


def test_every_workload_has_a_disruption_budget() -> None:
    budgets = [
        d["spec"]["selector"]["matchLabels"]
        for d in k8s_docs()
        if d["kind"] == "PodDisruptionBudget"
    ]
    for doc in workloads():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert any(b.items() <= labels.items() for b in budgets), doc["metadata"]["name"]


# --- metrics -----------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_prometheus_rule_is_the_alert_file() -> None:
    (rule,) = (d for d in k8s_docs() if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())


def test_alerts_cover_lag_dlq_stuck_and_restarts() -> None:
    exprs = " ".join(r["expr"] for r in alert_rules())
    for metric in (
        "receipt_streams_consumer_lag",
        "receipt_streams_rejected_total",
        "receipt_streams_loop_stuck",
        "receipt_streams_loop_restarts_total",
    ):
        assert metric in exprs
    for rule in alert_rules():
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def _used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        used.setdefault("alerts.yml", set()).update(METRIC.findall(rule["expr"]))
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            used.setdefault("dashboard", set()).update(METRIC.findall(target["expr"]))
    return used


@pytest.mark.parametrize("where", ["alerts.yml", "dashboard"])
def test_metric_names_exist_in_the_package(where: str) -> None:
    used = _used_metrics()[where]
    assert used
    unknown = used - registered_metrics()
    assert not unknown, f"{where} uses metrics the package does not register: {unknown}"
