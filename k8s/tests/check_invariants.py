#!/usr/bin/env python3
"""Checks Boardroom's own invariants over rendered Kubernetes manifests.

    check_invariants.py [options] RENDERED.yaml...   # exit 1 and one line per violation
    check_invariants.py --self-test RENDERED.yaml    # proves that each check can fail

RENDERED.yaml is the output of `kubectl kustomize k8s/overlays/<name>`. The schema itself is
kubernetes-validate's job (scripts/check-k8s runs both); this file checks what a schema
cannot: that every Deployment has gRPC probes on its gRPC port, requests and a memory limit,
an HPA, a PDB and a NetworkPolicy; that ports agree with the services' listen addresses and
with the Services, NetworkPolicies and ServiceMonitors; that images carry a real tag; the
security context; the recommended labels; that every referenced Secret/ConfigMap exists; and
that alerts and the HPA's custom metric name metrics the services really export. Objects
without a bundled schema (ServiceMonitor, PrometheusRule) get a structural check here.

Python 3.11 standard library plus PyYAML.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml

IMAGE = "ghcr.io/boardroom/boardroom"
# `boardroom serve --service <name>` -> (config section, gRPC port, admin port).
SERVICES: dict[str, tuple[str, int, int]] = {
    "session": ("session", 50051, 9091),
    "conversation": ("conversation", 50052, 9092),
    "cache": ("cache", 50053, 9093),
    "llm-gateway": ("llm", 50054, 9094),
}
# conversation.<key> -> the service its addresses must point at.
PEERS = {"session_addresses": "session", "llm_addresses": "llm-gateway"}
# Top-level keys of the config (shared/runtime/src/config.rs); BOARDROOM_<OTHER> is an error.
CONFIG_SECTIONS = {
    "telemetry", "server", "auth", "client", "database", "redis", "memory", "session",
    "cache", "llm", "conversation",
}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/managed-by",
)
PART_OF = "boardroom"
GRPC_PORT_NAME = "grpc"
ADMIN_PORT_NAME = "http-admin"
MONITORING_NAMESPACE = "monitoring"
HPA_CUSTOM_METRIC = "grpc_requests_per_second"
RUN_AS_USER = 65532
# Defaults of server.shutdown_delay_ms / drain_timeout_ms when the config does not set them.
DEFAULT_SHUTDOWN_DELAY_MS = 0
DEFAULT_DRAIN_TIMEOUT_MS = 25_000

# Metrics the services export (and the Kubernetes ones the alerts use). A name in an alert
# or adapter rule with one of these prefixes that is not listed is a typo.
EXPORTED_METRICS = {
    "rpc_server_requests_total", "rpc_server_call_duration_seconds",
    "rpc_server_call_duration_seconds_bucket", "rpc_server_call_duration_seconds_count",
    "rpc_server_call_duration_seconds_sum", "rpc_server_active_requests",
    "rpc_server_shed_total", "db_client_connections_usage", "db_client_connections_max",
    "db_client_connections_pending_requests", "db_client_overloaded", "db_client_refused_total",
    "db_client_operation_duration_seconds",
    "db_client_operation_duration_seconds_bucket", "db_client_operation_duration_seconds_count",
    "cache_requests_total", "cache_l2_up", "cache_evictions_total", "cache_loads_total",
    "cache_memory_pressure", "llm_circuit_open", "llm_requests_total", "llm_tokens_total",
    "llm_retries_total", "llm_fallbacks_total", "llm_gateway_overhead_seconds",
    "llm_gateway_overhead_seconds_bucket", "conversation_turns_total",
    "conversation_turns_running", "conversation_turn_overhead_seconds",
    "conversation_turn_overhead_seconds_bucket", "conversation_advisor_failures_total",
    "container_memory_working_set_bytes", "kube_pod_container_resource_limits",
    "kube_pod_container_status_restarts_total", "kube_deployment_status_replicas_available",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
}
METRIC_TOKEN = re.compile(r"\b((?:rpc|db_client|cache|llm|conversation|container|kube)_[a-z0-9_]+)")
# Label matchers and grouping clauses name labels, not metrics.
NOT_METRICS = re.compile(r"\{[^}]*\}|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# What the on-call alerts must cover: topic -> metric names of which one must be alerted on.
REQUIRED_ALERT_TOPICS = {
    "error rate": {"rpc_server_requests_total"},
    "p99 latency": {"rpc_server_call_duration_seconds_bucket"},
    "cache hit ratio": {"cache_requests_total"},
    "memory near limit": {"container_memory_working_set_bytes"},
    "LLM circuit open": {"llm_circuit_open"},
    "DB pool saturation": {"db_client_connections_usage", "db_client_connections_pending_requests"},
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PriorityClass", "StorageClass", "PersistentVolume"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def kn(obj: dict) -> str:
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def labels_of(obj: dict) -> dict:
    return obj.get("metadata", {}).get("labels") or {}


def pod_template(obj: dict) -> dict | None:
    if obj.get("kind") in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template")
    if obj.get("kind") == "CronJob":
        return obj.get("spec", {}).get("jobTemplate", {}).get("spec", {}).get("template")
    return None


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels/matchExpressions) against labels; empty matches all."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None without one); a digest counts as a tag."""
    if "@" in image:
        return image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def image_repo(image: str) -> str:
    ref = image.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return (head + "/" if head else "") + last.split(":", 1)[0]


def port_of(addr: str) -> tuple[str, int] | None:
    """`host:port` / `[v6]:port` -> (host, port)."""
    m = re.fullmatch(r"\[?([^\]]*)\]?:(\d+)", str(addr))
    return (m.group(1), int(m.group(2))) if m else None


def env_value(raw: str) -> Any:
    if re.fullmatch(r"-?\d+", raw):
        return int(raw)
    if raw in ("true", "false"):
        return raw == "true"
    return raw


def metric_names(expr: str) -> set[str]:
    """Metric names (of the prefixes we know) in a PromQL expression."""
    return set(METRIC_TOKEN.findall(NOT_METRICS.sub(" ", expr)))


def deep_get(data: dict, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


class Checker:
    """Collects violations of one rendered overlay."""

    def __init__(self, docs: list[dict], label: str, external_secrets: list[dict] | None = None,
                 adapter_rules: dict | None = None):
        self.docs = [d for d in docs if isinstance(d, dict)]
        self.label = label
        self.external_secrets = external_secrets or []
        self.adapter_rules = adapter_rules
        self.violations: list[str] = []

    # -- helpers -------------------------------------------------------------------------
    def fail(self, obj: dict | None, message: str) -> None:
        where = kn(obj) if obj else "-"
        self.violations.append(f"[{self.label}] {where}: {message}")

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def find(self, kind: str, name: str) -> dict | None:
        for d in self.of_kind(kind):
            if d.get("metadata", {}).get("name") == name:
                return d
        return None

    def secrets(self) -> dict[str, dict]:
        found = {d["metadata"]["name"]: d for d in self.of_kind("Secret")}
        for d in self.external_secrets:
            if d.get("kind") == "Secret":
                found.setdefault(d["metadata"]["name"], d)
        return found

    # -- entry point ---------------------------------------------------------------------
    def run(self) -> list[str]:
        if not self.docs:
            self.fail(None, "the render is empty")
            return self.violations
        self.check_labels_and_namespace()
        for obj in self.docs:
            if pod_template(obj) is not None:
                self.check_workload(obj)
        deployments = [d for d in self.of_kind("Deployment") if self.boardroom_container(d)]
        seen = set()
        for dep in deployments:
            service = self.check_service_deployment(dep)
            if service:
                seen.add(service)
        for service in SERVICES:
            if service not in seen:
                self.fail(None, f"no Deployment runs `boardroom serve --service {service}`")
        self.check_migration_job()
        self.check_services()
        self.check_network_policies()
        self.check_service_monitors()
        self.check_hpas()
        self.check_prometheus_rules()
        self.check_adapter_rules()
        return self.violations

    # -- every object --------------------------------------------------------------------
    def check_labels_and_namespace(self) -> None:
        namespaces = {d["metadata"]["name"] for d in self.of_kind("Namespace")}
        used = set()
        for obj in self.docs:
            meta = obj.get("metadata") or {}
            labels = meta.get("labels") or {}
            for key in RECOMMENDED_LABELS:
                if not labels.get(key):
                    self.fail(obj, f"missing recommended label {key}")
            if labels.get("app.kubernetes.io/part-of") not in (None, PART_OF):
                self.fail(obj, f"app.kubernetes.io/part-of must be {PART_OF!r}")
            template = pod_template(obj)
            if template is not None:
                tlabels = (template.get("metadata") or {}).get("labels") or {}
                for key in RECOMMENDED_LABELS:
                    if not tlabels.get(key):
                        self.fail(obj, f"pod template misses recommended label {key}")
            if obj.get("kind") not in CLUSTER_SCOPED:
                if not meta.get("namespace"):
                    self.fail(obj, "has no namespace (the overlay must set `namespace:`)")
                else:
                    used.add(meta["namespace"])
        if len(used) > 1:
            self.fail(None, f"objects are spread over several namespaces: {sorted(used)}")
        if namespaces and used - namespaces:
            self.fail(None, f"namespace(s) {sorted(used - namespaces)} not created by the render")

    # -- every pod template --------------------------------------------------------------
    def boardroom_container(self, obj: dict) -> dict | None:
        template = pod_template(obj) or {}
        for c in (template.get("spec") or {}).get("containers") or []:
            if image_repo(c.get("image", "")) == IMAGE:
                return c
        return None

    def check_workload(self, obj: dict) -> None:
        template = pod_template(obj) or {}
        spec = template.get("spec") or {}
        version = labels_of(obj).get("app.kubernetes.io/version")
        pod_sc = spec.get("securityContext") or {}
        containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
        if not spec.get("containers"):
            self.fail(obj, "pod template has no container")
        ours = False
        for c in containers:
            cname = c.get("name")
            image = c.get("image") or ""
            tag = image_tag(image)
            if not image:
                self.fail(obj, f"container {cname} has no image")
            elif tag is None:
                self.fail(obj, f"container {cname}: image {image!r} has no tag (set it in kustomization `images:`)")
            elif tag == "latest":
                self.fail(obj, f"container {cname}: image {image!r} uses the `latest` tag")
            resources = c.get("resources") or {}
            for key in ("cpu", "memory"):
                if not deep_get(resources, "requests", key):
                    self.fail(obj, f"container {cname} has no {key} request")
            if not deep_get(resources, "limits", "memory"):
                self.fail(obj, f"container {cname} has no memory limit")
            sc = c.get("securityContext") or {}

            def effective(key: str) -> Any:
                return sc.get(key, pod_sc.get(key))

            if effective("runAsNonRoot") is not True:
                self.fail(obj, f"container {cname}: runAsNonRoot must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                self.fail(obj, f"container {cname}: allowPrivilegeEscalation must be false")
            if "ALL" not in (deep_get(sc, "capabilities", "drop") or []):
                self.fail(obj, f"container {cname}: capabilities must drop ALL")
            if deep_get(sc, "seccompProfile", "type", default=deep_get(pod_sc, "seccompProfile", "type")) != "RuntimeDefault":
                self.fail(obj, f"container {cname}: seccompProfile must be RuntimeDefault")
            if sc.get("readOnlyRootFilesystem") is not True:
                self.fail(obj, f"container {cname}: readOnlyRootFilesystem must be true")
            if image_repo(image) != IMAGE:
                continue
            ours = True
            if tag and version and tag != version:
                self.fail(obj, f"container {cname}: image tag {tag!r} differs from app.kubernetes.io/version {version!r}")
            if effective("runAsUser") != RUN_AS_USER:
                self.fail(obj, f"container {cname}: runAsUser must be {RUN_AS_USER}")
            mounts = {m.get("mountPath"): m.get("name") for m in c.get("volumeMounts") or []}
            volumes = {v.get("name"): v for v in spec.get("volumes") or []}
            if "emptyDir" not in volumes.get(mounts.get("/tmp"), {}):
                self.fail(obj, f"container {cname}: /tmp must be an emptyDir mount")
            for env in c.get("env") or []:
                name = env.get("name", "")
                if name.startswith("BOARDROOM_"):
                    section = name[len("BOARDROOM_"):].split("__", 1)[0].lower()
                    if section not in CONFIG_SECTIONS:
                        self.fail(obj, f"container {cname}: env {name} is read by the config loader as unknown key `{section}` and rejected at start")
        if ours:
            if spec.get("enableServiceLinks") is not False:
                self.fail(obj, "enableServiceLinks must be false (service links inject BOARDROOM_*-prefixed variables)")
            if spec.get("automountServiceAccountToken") is not False:
                self.fail(obj, "automountServiceAccountToken must be false")
        self.check_references(obj, spec)

    def check_references(self, obj: dict, spec: dict) -> None:
        secrets = self.secrets()
        configmaps = {d["metadata"]["name"]: d for d in self.of_kind("ConfigMap")}

        def need(kind: str, name: str | None, optional: bool, key: str | None = None) -> None:
            pool = secrets if kind == "Secret" else configmaps
            if optional or not name:
                return
            if name not in pool:
                self.fail(obj, f"references {kind} {name!r}, which is neither rendered nor documented")
                return
            if key is not None:
                data = {**(pool[name].get("data") or {}), **(pool[name].get("stringData") or {})}
                if key not in data:
                    self.fail(obj, f"references key {key!r} of {kind} {name!r}, which it does not have")

        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    need("Secret", src["secretRef"].get("name"), bool(src["secretRef"].get("optional")))
                if "configMapRef" in src:
                    need("ConfigMap", src["configMapRef"].get("name"), bool(src["configMapRef"].get("optional")))
            for env in c.get("env") or []:
                vf = env.get("valueFrom") or {}
                if "secretKeyRef" in vf:
                    r = vf["secretKeyRef"]
                    need("Secret", r.get("name"), bool(r.get("optional")), r.get("key"))
                if "configMapKeyRef" in vf:
                    r = vf["configMapKeyRef"]
                    need("ConfigMap", r.get("name"), bool(r.get("optional")), r.get("key"))
        for v in spec.get("volumes") or []:
            if "secret" in v:
                need("Secret", v["secret"].get("secretName"), bool(v["secret"].get("optional")))
            if "configMap" in v:
                need("ConfigMap", v["configMap"].get("name"), bool(v["configMap"].get("optional")))

    # -- configuration -------------------------------------------------------------------
    def mounted_config(self, obj: dict, container: dict) -> tuple[dict | None, str | None]:
        """The TOML the container is started with (--config), parsed."""
        args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        path = None
        for i, arg in enumerate(args):
            if arg == "--config" and i + 1 < len(args):
                path = args[i + 1]
            elif arg.startswith("--config="):
                path = arg.split("=", 1)[1]
        if path is None:
            self.fail(obj, "container must pass --config <file> (the mounted boardroom.toml)")
            return None, None
        spec = (pod_template(obj) or {}).get("spec") or {}
        volumes = {v.get("name"): v for v in spec.get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            mount = m.get("mountPath", "").rstrip("/")
            if m.get("subPath"):
                if mount != path:
                    continue
                key = m["subPath"]
            elif path.startswith(mount + "/"):
                key = path[len(mount) + 1:]
            else:
                continue
            volume = volumes.get(m.get("name"), {})
            cm_name = deep_get(volume, "configMap", "name")
            if not cm_name:
                self.fail(obj, f"config file {path} is not mounted from a ConfigMap")
                return None, path
            cm = self.find("ConfigMap", cm_name)
            if cm is None:
                return None, path  # reported by check_references
            text = (cm.get("data") or {}).get(key)
            if text is None:
                self.fail(obj, f"ConfigMap {cm_name} has no key {key!r} for --config {path}")
                return None, path
            try:
                return tomllib.loads(text), path
            except tomllib.TOMLDecodeError as err:
                self.fail(cm, f"key {key!r} is not valid TOML: {err}")
                return None, path
        self.fail(obj, f"config file {path} is not mounted")
        return None, path

    @staticmethod
    def effective_config(config: dict, container: dict) -> dict:
        """The file overlaid with the container's literal BOARDROOM_* variables."""
        merged = copy.deepcopy(config)
        for env in container.get("env") or []:
            name = env.get("name", "")
            if not name.startswith("BOARDROOM_") or "value" not in env:
                continue
            path = name[len("BOARDROOM_"):].lower().split("__")
            node = merged
            for key in path[:-1]:
                node = node.setdefault(key, {})
                if not isinstance(node, dict):
                    break
            else:
                node[path[-1]] = env_value(str(env["value"]))
        return merged

    # -- the four services ---------------------------------------------------------------
    def check_service_deployment(self, dep: dict) -> str | None:
        container = self.boardroom_container(dep)
        assert container is not None
        args = [str(a) for a in container.get("args") or []]
        service = None
        if "--service" in args and args.index("--service") + 1 < len(args):
            service = args[args.index("--service") + 1]
        if not args or args[0] != "serve" or service not in SERVICES:
            self.fail(dep, f"container {container.get('name')} must run `serve --service <one of {sorted(SERVICES)}>` (args {args})")
            return None
        section, grpc, admin = SERVICES[service]
        name = dep["metadata"]["name"]
        if name != f"boardroom-{service}":
            self.fail(dep, f"runs service {service} but is not named boardroom-{service}")
        spec = dep.get("spec") or {}
        pod_spec = deep_get(spec, "template", "spec", default={})
        pod_labels = deep_get(spec, "template", "metadata", "labels", default={})
        if not selector_matches(spec.get("selector"), pod_labels):
            self.fail(dep, "spec.selector does not match its own pod template")

        # Ports: container <-> expected <-> configured listen addresses.
        ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        for pname, expected in ((GRPC_PORT_NAME, grpc), (ADMIN_PORT_NAME, admin)):
            if ports.get(pname) != expected:
                self.fail(dep, f"container port {pname} is {ports.get(pname)}, expected {expected} for {service}")
        config, _ = self.mounted_config(dep, container)
        if config is not None:
            eff = self.effective_config(config, container)
            for key, expected in (("grpc_addr", grpc), ("admin_addr", admin)):
                addr = deep_get(eff, section, "listen", key)
                parsed = port_of(addr) if addr is not None else None
                if parsed is None:
                    self.fail(dep, f"{section}.listen.{key} is not set (env BOARDROOM_{section.upper()}__LISTEN__{key.upper()} or the config file); the default listens on loopback only")
                    continue
                host, port = parsed
                if port != expected:
                    self.fail(dep, f"{section}.listen.{key} is {addr}: port {port}, but the {service} {('grpc' if key == 'grpc_addr' else 'admin')} port is {expected}")
                if host in ("127.0.0.1", "localhost", "::1"):
                    self.fail(dep, f"{section}.listen.{key} is {addr}: loopback is unreachable for probes and peers")
            delay = deep_get(eff, "server", "shutdown_delay_ms", default=DEFAULT_SHUTDOWN_DELAY_MS)
            drain = deep_get(eff, "server", "drain_timeout_ms", default=DEFAULT_DRAIN_TIMEOUT_MS)
            grace = pod_spec.get("terminationGracePeriodSeconds", 30)
            if grace * 1000 <= delay + drain:
                self.fail(dep, f"terminationGracePeriodSeconds {grace} must exceed server.shutdown_delay_ms + drain_timeout_ms ({delay + drain} ms)")
            if service in ("session", "conversation") and deep_get(eff, "database", "migrate_on_start", default=True) is not False:
                self.fail(dep, "database.migrate_on_start must be false (the migration Job migrates)")
            if deep_get(eff, "auth", "enabled", default=False):
                tokens_dir = str(deep_get(eff, "auth", "tokens_dir", default="")).rstrip("/")
                volumes = {v.get("name"): v for v in pod_spec.get("volumes") or []}
                mounted = any(m.get("mountPath", "").rstrip("/") == tokens_dir and "secret" in volumes.get(m.get("name"), {})
                              for m in container.get("volumeMounts") or [])
                if not mounted:
                    self.fail(dep, f"auth.tokens_dir {tokens_dir!r} is not a mounted Secret")
            if service == "conversation":
                self.check_peers(dep, eff)

        # Probes: native gRPC on the gRPC port.
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            spec_probe = container.get(probe)
            if spec_probe is None:
                if probe != "startupProbe":
                    self.fail(dep, f"container {container.get('name')} has no {probe}")
                continue
            if "grpc" not in spec_probe:
                self.fail(dep, f"{probe} must be a native grpc probe (grpc.health.v1)")
            elif spec_probe["grpc"].get("port") != grpc:
                self.fail(dep, f"{probe} checks port {spec_probe['grpc'].get('port')}, not the grpc port {grpc}")

        # Scaling and disruption.
        hpas = [h for h in self.of_kind("HorizontalPodAutoscaler")
                if deep_get(h, "spec", "scaleTargetRef", "kind") == "Deployment"
                and deep_get(h, "spec", "scaleTargetRef", "name") == name]
        if len(hpas) != 1:
            self.fail(dep, f"needs exactly one HorizontalPodAutoscaler targeting it, found {len(hpas)}")
        elif "replicas" in spec:
            self.fail(dep, "sets spec.replicas although an HPA scales it (every apply would reset the HPA)")
        if not any(selector_matches(deep_get(p, "spec", "selector"), pod_labels) for p in self.of_kind("PodDisruptionBudget")):
            self.fail(dep, "no PodDisruptionBudget selects its pods")

        # Network policy: gRPC admitted from someone, admin from the monitoring namespace.
        policies = [p for p in self.of_kind("NetworkPolicy")
                    if deep_get(p, "spec", "podSelector") and selector_matches(deep_get(p, "spec", "podSelector"), pod_labels)
                    and (deep_get(p, "spec", "podSelector", "matchLabels") or deep_get(p, "spec", "podSelector", "matchExpressions"))]
        if not policies:
            self.fail(dep, "no NetworkPolicy selects its pods")
        else:
            rules = [r for p in policies for r in deep_get(p, "spec", "ingress", default=[]) or []]
            grpc_ok = any(any(pt.get("port") in (grpc, GRPC_PORT_NAME) for pt in r.get("ports") or []) and r.get("from") for r in rules)
            admin_ok = any(any(pt.get("port") in (admin, ADMIN_PORT_NAME) for pt in r.get("ports") or [])
                           and any(deep_get(f, "namespaceSelector", "matchLabels", "kubernetes.io/metadata.name") == MONITORING_NAMESPACE
                                   for f in r.get("from") or [])
                           for r in rules)
            if not grpc_ok:
                self.fail(dep, f"its NetworkPolicy admits no caller to the grpc port {grpc}")
            if not admin_ok:
                self.fail(dep, f"its NetworkPolicy does not admit namespace {MONITORING_NAMESPACE} to the admin port {admin}")

        # The gRPC Service peers use: boardroom-<service>, headless, port grpc.
        svc = self.find("Service", f"boardroom-{service}")
        if svc is None:
            self.fail(dep, f"no Service boardroom-{service}")
        else:
            sspec = svc.get("spec") or {}
            if sspec.get("clusterIP") != "None":
                self.fail(svc, "the gRPC Service must be headless (clusterIP: None)")
            if not selector_matches({"matchLabels": sspec.get("selector") or {}}, pod_labels) or not sspec.get("selector"):
                self.fail(svc, f"does not select the pods of {name}")
            gport = [p for p in sspec.get("ports") or [] if p.get("name") == GRPC_PORT_NAME]
            if not gport:
                self.fail(svc, f"has no port named {GRPC_PORT_NAME}")
            elif gport[0].get("port") != grpc or gport[0].get("targetPort") not in (grpc, GRPC_PORT_NAME) or gport[0].get("appProtocol") != "grpc":
                self.fail(svc, f"port {GRPC_PORT_NAME} must be {grpc} -> {GRPC_PORT_NAME} with appProtocol grpc")

        # Prometheus: some ServiceMonitor scrapes http-admin of a Service selecting these pods.
        admin_services = [s for s in self.of_kind("Service")
                          if deep_get(s, "spec", "selector") and selector_matches({"matchLabels": s["spec"]["selector"]}, pod_labels)
                          and any(p.get("name") == ADMIN_PORT_NAME and p.get("targetPort") in (admin, ADMIN_PORT_NAME)
                                  for p in s["spec"].get("ports") or [])]
        monitored = any(selector_matches(deep_get(m, "spec", "selector"), labels_of(s))
                        and any(e.get("port") == ADMIN_PORT_NAME for e in deep_get(m, "spec", "endpoints", default=[]) or [])
                        for m in self.of_kind("ServiceMonitor") for s in admin_services)
        if not admin_services:
            self.fail(dep, f"no Service exposes its admin port as {ADMIN_PORT_NAME} -> {admin}")
        elif not monitored:
            self.fail(dep, f"no ServiceMonitor scrapes port {ADMIN_PORT_NAME} of a Service selecting its pods")
        return service

    def check_peers(self, dep: dict, eff: dict) -> None:
        for key, target in PEERS.items():
            addresses = deep_get(eff, "conversation", key)
            _, grpc, _ = SERVICES[target]
            if not isinstance(addresses, list) or not addresses:
                self.fail(dep, f"conversation.{key} must list the {target} Service (the default is loopback)")
                continue
            for address in addresses:
                m = re.fullmatch(r"https?://([^:/]+):(\d+)/?", str(address))
                if not m:
                    self.fail(dep, f"conversation.{key}: {address!r} is not http(s)://host:port")
                    continue
                host, port = m.group(1).split(".")[0], int(m.group(2))
                if host != f"boardroom-{target}" or port != grpc:
                    self.fail(dep, f"conversation.{key}: {address!r} must point at boardroom-{target}:{grpc}")
                elif self.find("Service", host) is None:
                    self.fail(dep, f"conversation.{key}: no Service {host} in the render")

    def check_migration_job(self) -> None:
        jobs = [j for j in self.of_kind("Job") if self.boardroom_container(j)]
        if not any([str(a) for a in (self.boardroom_container(j) or {}).get("args") or []][:1] == ["migrate"]
                   and "up" in [str(a) for a in (self.boardroom_container(j) or {}).get("args") or []] for j in jobs):
            self.fail(None, "no Job runs `boardroom migrate up`")
        for job in jobs:
            container = self.boardroom_container(job) or {}
            config, _ = self.mounted_config(job, container)
            if deep_get(job, "spec", "template", "spec", "restartPolicy") not in ("Never", "OnFailure"):
                self.fail(job, "restartPolicy must be Never or OnFailure")
            if config is not None and not any("secretRef" in s for s in container.get("envFrom") or []):
                self.fail(job, "gets no database Secret")

    # -- Services, NetworkPolicies, ServiceMonitors, HPAs --------------------------------
    def pods_selected(self, selector: dict) -> list[tuple[dict, dict]]:
        out = []
        for obj in self.docs:
            template = pod_template(obj)
            if template is None:
                continue
            if selector_matches(selector, (template.get("metadata") or {}).get("labels") or {}):
                out.append((obj, template))
        return out

    def check_services(self) -> None:
        for svc in self.of_kind("Service"):
            selector = deep_get(svc, "spec", "selector")
            if not selector:
                continue
            pods = self.pods_selected({"matchLabels": selector})
            if not pods:
                self.fail(svc, f"selector {selector} matches no pod template")
                continue
            cports = [p for _, t in pods for c in deep_get(t, "spec", "containers", default=[]) for p in c.get("ports") or []]
            for port in deep_get(svc, "spec", "ports", default=[]) or []:
                target = port.get("targetPort", port.get("port"))
                if not any(target in (p.get("name"), p.get("containerPort")) for p in cports):
                    self.fail(svc, f"targetPort {target!r} of port {port.get('name')} is no container port of the selected pods")

    def check_network_policies(self) -> None:
        for pol in self.of_kind("NetworkPolicy"):
            selector = deep_get(pol, "spec", "podSelector")
            if not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions"):
                continue  # namespace-wide default
            pods = self.pods_selected(selector)
            if not pods:
                self.fail(pol, "podSelector matches no pod template")
                continue
            cports = {p.get("containerPort") for _, t in pods for c in deep_get(t, "spec", "containers", default=[]) for p in c.get("ports") or []}
            cnames = {p.get("name") for _, t in pods for c in deep_get(t, "spec", "containers", default=[]) for p in c.get("ports") or []}
            for rule in deep_get(pol, "spec", "ingress", default=[]) or []:
                for pt in rule.get("ports") or []:
                    if pt.get("port") not in cports and pt.get("port") not in cnames:
                        self.fail(pol, f"admits port {pt.get('port')}, which its pods do not listen on")
                for src in rule.get("from") or []:
                    if "podSelector" in src and "namespaceSelector" not in src and not self.pods_selected(src["podSelector"]) \
                            and not deep_get(src, "podSelector", "matchLabels", "boardroom.io/client"):
                        self.fail(pol, f"admits pods {src['podSelector']}, which match no workload of the render")

    def check_service_monitors(self) -> None:
        for sm in self.of_kind("ServiceMonitor"):
            spec = sm.get("spec") or {}
            if not isinstance(spec.get("selector"), dict) or not spec["selector"]:
                self.fail(sm, "spec.selector is required")
            endpoints = spec.get("endpoints")
            if not isinstance(endpoints, list) or not endpoints:
                self.fail(sm, "spec.endpoints must be a non-empty list")
                continue
            for e in endpoints:
                if e.get("port") != ADMIN_PORT_NAME:
                    self.fail(sm, f"endpoint port is {e.get('port')!r}; it must be the admin port name {ADMIN_PORT_NAME!r}")
                for key in ("interval", "scrapeTimeout"):
                    if key in e and not DURATION.match(str(e[key])):
                        self.fail(sm, f"endpoint {key} {e[key]!r} is not a Prometheus duration")
            services = [s for s in self.of_kind("Service") if selector_matches(spec.get("selector"), labels_of(s))]
            if not services:
                self.fail(sm, "selects no Service of the render")

    def check_hpas(self) -> None:
        provided = set()
        for rule in deep_get(self.adapter_rules or {}, "rules", "custom", default=[]) or []:
            provided.add(deep_get(rule, "name", "as"))
        for hpa in self.of_kind("HorizontalPodAutoscaler"):
            spec = hpa.get("spec") or {}
            target = spec.get("scaleTargetRef") or {}
            if self.find(target.get("kind", ""), target.get("name", "")) is None:
                self.fail(hpa, f"scaleTargetRef {target.get('kind')}/{target.get('name')} is not in the render")
            lo, hi = spec.get("minReplicas", 1), spec.get("maxReplicas", 0)
            if not 1 <= lo <= hi:
                self.fail(hpa, f"needs 1 <= minReplicas ({lo}) <= maxReplicas ({hi})")
            behavior = spec.get("behavior") or {}
            for key in ("scaleUp", "scaleDown"):
                if not behavior.get(key):
                    self.fail(hpa, f"behavior.{key} is not set")
            metrics = spec.get("metrics") or []
            if not any(m.get("type") == "Resource" and deep_get(m, "resource", "name") == "cpu" for m in metrics):
                self.fail(hpa, "has no CPU metric")
            pods_metrics = [deep_get(m, "pods", "metric", "name") for m in metrics if m.get("type") == "Pods"]
            if HPA_CUSTOM_METRIC not in pods_metrics:
                self.fail(hpa, f"has no Pods metric {HPA_CUSTOM_METRIC}")
            if self.adapter_rules is not None:
                for name in pods_metrics:
                    if name not in provided:
                        self.fail(hpa, f"Pods metric {name} is provided by no prometheus-adapter rule")

    # -- monitoring objects without a schema ---------------------------------------------
    def check_prometheus_rules(self) -> None:
        rules_objs = self.of_kind("PrometheusRule")
        if not rules_objs:
            self.fail(None, "no PrometheusRule")
            return
        alerted: set[str] = set()
        names: set[str] = set()
        for pr in rules_objs:
            groups = deep_get(pr, "spec", "groups")
            if not isinstance(groups, list) or not groups:
                self.fail(pr, "spec.groups must be a non-empty list")
                continue
            for group in groups:
                if not group.get("name") or not isinstance(group.get("rules"), list) or not group["rules"]:
                    self.fail(pr, f"group {group.get('name')!r} needs a name and a non-empty rules list")
                    continue
                for rule in group["rules"]:
                    alert = rule.get("alert")
                    expr = str(rule.get("expr") or "")
                    label = alert or rule.get("record") or "?"
                    if bool(alert) == bool(rule.get("record")):
                        self.fail(pr, f"rule {label}: exactly one of alert/record")
                    if not expr.strip():
                        self.fail(pr, f"rule {label}: empty expr")
                    if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                        self.fail(pr, f"rule {label}: unbalanced brackets in expr")
                    if "for" in rule and not DURATION.match(str(rule["for"])):
                        self.fail(pr, f"rule {label}: `for` {rule['for']!r} is not a duration")
                    metrics = metric_names(expr)
                    for metric in sorted(metrics - EXPORTED_METRICS):
                        self.fail(pr, f"rule {label}: metric {metric} is not exported by the services (typo?)")
                    if alert:
                        if alert in names:
                            self.fail(pr, f"alert {alert} is defined twice")
                        names.add(alert)
                        if deep_get(rule, "labels", "severity") not in ("critical", "warning", "info"):
                            self.fail(pr, f"alert {alert}: labels.severity must be critical, warning or info")
                        if not deep_get(rule, "annotations", "summary"):
                            self.fail(pr, f"alert {alert}: annotations.summary is required")
                        alerted |= metrics
        for topic, metrics in REQUIRED_ALERT_TOPICS.items():
            if not metrics & alerted:
                self.fail(None, f"no alert covers {topic} (one of {sorted(metrics)})")

    def check_adapter_rules(self) -> None:
        if self.adapter_rules is None:
            return
        rules = deep_get(self.adapter_rules, "rules", "custom", default=[]) or []
        ours = [r for r in rules if deep_get(r, "name", "as") == HPA_CUSTOM_METRIC]
        if not ours:
            self.fail(None, f"prometheus-adapter rules define no metric {HPA_CUSTOM_METRIC}")
        for rule in ours:
            text = f"{rule.get('seriesQuery', '')} {rule.get('metricsQuery', '')}"
            if "rpc_server_requests_total" not in text:
                self.fail(None, f"adapter rule {HPA_CUSTOM_METRIC} must come from rpc_server_requests_total")
            for metric in sorted(metric_names(text) - EXPORTED_METRICS):
                self.fail(None, f"adapter rule {HPA_CUSTOM_METRIC}: metric {metric} is not exported")
            overrides = deep_get(rule, "resources", "overrides", default={}) or {}
            if {"namespace", "pod"} - set(overrides):
                self.fail(None, f"adapter rule {HPA_CUSTOM_METRIC} must map the namespace and pod labels")


# -- command line ------------------------------------------------------------------------

def load_yaml_docs(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d]


def check_files(paths: list[str], external: dict[str, list[dict]], adapter: dict | None) -> list[str]:
    violations: list[str] = []
    for path in paths:
        label = Path(path).stem
        violations += Checker(load_yaml_docs(path), label, external.get(label), adapter).run()
    return violations


def parse_external(values: list[str]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for value in values:
        label, _, path = value.partition("=")
        if not path:
            raise SystemExit(f"--external-secrets wants OVERLAY=FILE, got {value!r}")
        out.setdefault(label, []).extend(load_yaml_docs(path))
    return out


# -- self-test: every check must be able to fail ------------------------------------------

def _obj(docs: list[dict], kind: str, name: str) -> dict:
    for d in docs:
        if d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"{kind}/{name} not in the render")


def _container(docs: list[dict], name: str) -> dict:
    return _obj(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def _env(container: dict, name: str, value: str) -> None:
    for env in container.setdefault("env", []):
        if env["name"] == name:
            env["value"] = value
            return
    container["env"].append({"name": name, "value": value})


def _remove(docs: list[dict], kind: str, name: str) -> None:
    docs.remove(_obj(docs, kind, name))


def _config(docs: list[dict], old: str, new: str) -> None:
    for d in docs:
        if d.get("kind") == "ConfigMap" and "boardroom.toml" in (d.get("data") or {}):
            if old not in d["data"]["boardroom.toml"]:
                raise KeyError(f"{old!r} not in boardroom.toml")
            d["data"]["boardroom.toml"] = d["data"]["boardroom.toml"].replace(old, new)


def _first_alert(docs: list[dict]) -> dict:
    return [d for d in docs if d.get("kind") == "PrometheusRule"][0]["spec"]["groups"][0]["rules"][0]


MUTATIONS: list[tuple[str, str, Callable[[list[dict]], None]]] = [
    ("liveness probe removed", "has no livenessProbe",
     lambda d: _container(d, "boardroom-session").pop("livenessProbe")),
    ("readiness probe over HTTP", "readinessProbe must be a native grpc probe",
     lambda d: _container(d, "boardroom-cache").update(readinessProbe={"httpGet": {"path": "/readyz", "port": 9093}})),
    ("probe on the admin port", "not the grpc port",
     lambda d: _container(d, "boardroom-conversation")["livenessProbe"]["grpc"].update(port=9092)),
    ("image tag latest", "uses the `latest` tag",
     lambda d: _container(d, "boardroom-cache").update(image="ghcr.io/boardroom/boardroom:latest")),
    ("image without tag", "has no tag",
     lambda d: _container(d, "boardroom-llm-gateway").update(image="ghcr.io/boardroom/boardroom")),
    ("tag differs from version label", "differs from app.kubernetes.io/version",
     lambda d: _container(d, "boardroom-session").update(image="ghcr.io/boardroom/boardroom:9.9.9")),
    ("memory limit removed", "has no memory limit",
     lambda d: _container(d, "boardroom-llm-gateway")["resources"].pop("limits")),
    ("cpu request removed", "has no cpu request",
     lambda d: _container(d, "boardroom-session")["resources"]["requests"].pop("cpu")),
    ("grpc container port drifts", "container port grpc is 50099",
     lambda d: _container(d, "boardroom-conversation")["ports"][0].update(containerPort=50099)),
    ("admin listen address drifts", "session.listen.admin_addr is 0.0.0.0:9999",
     lambda d: _env(_container(d, "boardroom-session"), "BOARDROOM_SESSION__LISTEN__ADMIN_ADDR", "0.0.0.0:9999")),
    ("listen on loopback", "loopback is unreachable",
     lambda d: _env(_container(d, "boardroom-cache"), "BOARDROOM_CACHE__LISTEN__GRPC_ADDR", "127.0.0.1:50053")),
    ("service links on", "enableServiceLinks must be false",
     lambda d: _obj(d, "Deployment", "boardroom-session")["spec"]["template"]["spec"].update(enableServiceLinks=True)),
    ("HPA removed", "needs exactly one HorizontalPodAutoscaler",
     lambda d: _remove(d, "HorizontalPodAutoscaler", "boardroom-cache")),
    ("HPA behavior removed", "behavior.scaleDown is not set",
     lambda d: _obj(d, "HorizontalPodAutoscaler", "boardroom-session")["spec"]["behavior"].pop("scaleDown")),
    ("replicas set beside the HPA", "sets spec.replicas",
     lambda d: _obj(d, "Deployment", "boardroom-cache")["spec"].update(replicas=3)),
    ("PDB removed", "no PodDisruptionBudget selects",
     lambda d: _remove(d, "PodDisruptionBudget", "boardroom-session")),
    ("NetworkPolicy removed", "no NetworkPolicy selects",
     lambda d: _remove(d, "NetworkPolicy", "boardroom-llm-gateway")),
    ("NetworkPolicy admits the wrong port", "admits port 50099",
     lambda d: _obj(d, "NetworkPolicy", "boardroom-session")["spec"]["ingress"][0]["ports"][0].update(port=50099)),
    ("ServiceMonitor on another port", "must be the admin port name",
     lambda d: _obj(d, "ServiceMonitor", "boardroom-cache")["spec"]["endpoints"][0].update(port="metrics")),
    ("gRPC Service not headless", "must be headless",
     lambda d: _obj(d, "Service", "boardroom-session")["spec"].pop("clusterIP")),
    ("recommended label missing", "missing recommended label app.kubernetes.io/version",
     lambda d: _obj(d, "Service", "boardroom-cache")["metadata"]["labels"].pop("app.kubernetes.io/version")),
    ("writable root filesystem", "readOnlyRootFilesystem must be true",
     lambda d: _container(d, "boardroom-cache")["securityContext"].update(readOnlyRootFilesystem=False)),
    ("root user", "runAsUser must be 65532",
     lambda d: _container(d, "boardroom-session")["securityContext"].update(runAsUser=0)),
    ("privilege escalation", "allowPrivilegeEscalation must be false",
     lambda d: _container(d, "boardroom-conversation")["securityContext"].pop("allowPrivilegeEscalation")),
    ("short grace period", "terminationGracePeriodSeconds 10 must exceed",
     lambda d: _obj(d, "Deployment", "boardroom-cache")["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=10)),
    ("peer address on the wrong port", "must point at boardroom-session:50051",
     lambda d: _config(d, "boardroom-session:50051", "boardroom-session:50052")),
    ("migrations on start", "migrate_on_start must be false",
     lambda d: _config(d, "migrate_on_start = false", "migrate_on_start = true")),
    ("missing Secret", "references Secret 'boardroom-nope'",
     lambda d: _container(d, "boardroom-cache")["envFrom"].append({"secretRef": {"name": "boardroom-nope"}})),
    ("alert on a misspelt metric", "metric rpc_server_request_total is not exported",
     lambda d: _first_alert(d).update(expr="rate(rpc_server_request_total[5m]) > 0")),
    ("migration Job removed", "no Job runs `boardroom migrate up`",
     lambda d: _remove(d, "Job", "boardroom-migrate")),
]


def self_test(path: str, external: dict[str, list[dict]], adapter: dict | None) -> int:
    label = Path(path).stem
    base = load_yaml_docs(path)
    clean = Checker(copy.deepcopy(base), label, external.get(label), adapter).run()
    if clean:
        print("self-test: the unmodified render must pass first:", *clean, sep="\n  ")
        return 1
    passed, failed = 0, 0
    for title, expected, mutate in MUTATIONS:
        docs = copy.deepcopy(base)
        try:
            mutate(docs)
        except (KeyError, IndexError, ValueError) as err:
            print(f"self-test: FAIL {title}: could not mutate the render ({err})")
            failed += 1
            continue
        found = Checker(docs, label, external.get(label), adapter).run()
        if any(expected in v for v in found):
            passed += 1
        else:
            failed += 1
            print(f"self-test: FAIL {title}: expected a violation containing {expected!r}, got {found or 'none'}")
    # The command line must exit non-zero on a broken render.
    docs = copy.deepcopy(base)
    _container(docs, "boardroom-session").pop("readinessProbe")
    _container(docs, "boardroom-cache").update(image="ghcr.io/boardroom/boardroom:latest")
    with tempfile.TemporaryDirectory() as tmp:
        broken = os.path.join(tmp, f"{label}.yaml")
        with open(broken, "w", encoding="utf-8") as fh:
            yaml.safe_dump_all(docs, fh)
        cmd = [sys.executable, os.path.abspath(__file__), broken]
        for key, value in external.items():
            secrets_file = os.path.join(tmp, f"secrets-{key}.yaml")
            with open(secrets_file, "w", encoding="utf-8") as fh:
                yaml.safe_dump_all(value, fh)
            cmd += ["--external-secrets", f"{key}={secrets_file}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 and "has no readinessProbe" in proc.stdout and "`latest`" in proc.stdout:
            passed += 1
        else:
            failed += 1
            print(f"self-test: FAIL command line on a broken render: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    print(f"self-test ({label}): {passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rendered", nargs="+", help="output of `kubectl kustomize <overlay>`; the file's stem names the overlay")
    parser.add_argument("--external-secrets", action="append", default=[], metavar="OVERLAY=FILE",
                        help="Secrets an overlay expects to exist without rendering them (e.g. prod=k8s/overlays/prod/secrets.example.yaml)")
    parser.add_argument("--adapter-rules", metavar="FILE", help="prometheus-adapter rules providing the HPAs' custom metric")
    parser.add_argument("--self-test", action="store_true", help="mutate each render and check that every violation is caught")
    args = parser.parse_args(argv)
    external = parse_external(args.external_secrets)
    adapter = None
    if args.adapter_rules:
        with open(args.adapter_rules, encoding="utf-8") as fh:
            adapter = yaml.safe_load(fh)
    if args.self_test:
        return max(self_test(path, external, adapter) for path in args.rendered)
    violations = check_files(args.rendered, external, adapter)
    for v in violations:
        print(f"FAIL {v}")
    if violations:
        print(f"k8s invariants: {len(violations)} violation(s)")
        return 1
    print(f"k8s invariants: {', '.join(Path(p).stem for p in args.rendered)} ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
