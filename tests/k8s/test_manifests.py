"""The Kubernetes manifests are valid for the Kubernetes version we name and agree with the code.

Every rendered overlay validates offline in strict mode with ``kubernetes-validate``; custom
resources (Prometheus Operator) are skipped by an explicit list with a reason. Beyond schema:
probe ports and health service names are the ones the servers register, the HPA metric is one
the embed service exports, alerts only use exported metrics, env vars are settings fields,
Services and policies point at real container ports, and the drain fits the grace period.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from tests.k8s.kustomize_render import Doc, render

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "k8s"
# The version we run on, and the oldest one docs/operations.md promises (native sidecars,
# the preStop sleep action).
KUBERNETES_VERSIONS = ("1.31", "1.30")
OVERLAYS = {
    "gpu": K8S / "overlays" / "gpu",
    "cpu-dev": K8S / "overlays" / "cpu-dev",
    "gpu-traces": K8S / "overlays" / "gpu-traces",
}
RENDERED_DIRS = {"base": K8S / "base", **OVERLAYS, "monitoring": K8S / "monitoring"}
NAMESPACE = "intent-embed"

# Custom resources have no schema in kubernetes-validate; they are checked structurally below.
SKIPPED_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "Prometheus Operator CRD, no upstream schema",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "Prometheus Operator CRD, no upstream schema",
}
# Env vars a container may carry beyond its service's settings (read by libraries).
LIBRARY_ENV = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME",
               "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(path) for name, path in RENDERED_DIRS.items()}


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(docs: list[Doc], deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in all_containers(pod) if c["name"] == name]
    return found


def env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def port(c: dict[str, Any], name: str) -> int:
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(number)


def deployments(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if d["kind"] == "Deployment")


# -- schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", sorted(RENDERED_DIRS))
def test_every_rendered_manifest_validates_strictly(
    rendered: dict[str, list[Doc]], name: str, version: str
) -> None:
    skipped = []
    for doc in rendered[name]:
        key = (doc["apiVersion"], doc["kind"])
        if key in SKIPPED_KINDS:
            skipped.append(key)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']}: {err.message}")
    # Only the monitoring kustomization may hold custom resources; the app must apply on a
    # cluster without the Prometheus Operator.
    assert not skipped or name == "monitoring", skipped


def test_custom_resources_are_well_formed(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["monitoring"]
    kinds = {(d["apiVersion"], d["kind"]) for d in docs} - {("v1", "ConfigMap")}
    assert kinds == set(SKIPPED_KINDS)
    for doc in docs:
        if doc["kind"] == "PrometheusRule":
            for group in doc["spec"]["groups"]:
                for rule in group["rules"]:
                    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
                    assert rule["labels"]["severity"] in {"warning", "critical"}
                    assert rule["annotations"]["summary"]
        if doc["kind"] == "PodMonitor":
            pod = pod_spec(rendered["gpu"], doc["spec"]["selector"]["matchLabels"][
                "app.kubernetes.io/name"
            ])
            names = {p["name"] for c in all_containers(pod) for p in c.get("ports", [])}
            for endpoint in doc["spec"]["podMetricsEndpoints"]:
                assert endpoint["port"] in names, endpoint


def test_every_file_under_k8s_is_part_of_a_kustomization(rendered: dict[str, list[Doc]]) -> None:
    referenced = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        referenced.add(kustomization)
        for entry in spec.get("resources", []):
            referenced.add((kustomization.parent / entry).resolve())
        for patch in spec.get("patches", []):
            referenced.add((kustomization.parent / patch["path"]).resolve())
    stray = [p for p in K8S.rglob("*.yaml") if p.resolve() not in referenced | {p}]
    assert not stray, f"manifests no kustomization applies: {stray}"


# -- manifests and code agree ------------------------------------------------------------


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_probes_use_the_ports_and_health_names_the_servers_register(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    from embed_service.server import SERVICE_NAME as EMBED_SERVICE
    from embed_service.settings import Settings as EmbedSettings
    from metering.server import SERVICE_NAME as METERING_SERVICE
    from metering.settings import Settings as MeteringSettings

    docs = rendered[overlay]
    checks: list[tuple[str, type[BaseSettings], str]] = [
        ("embed", EmbedSettings, EMBED_SERVICE),
        ("metering", MeteringSettings, METERING_SERVICE),
    ]
    for name, settings_cls, service in checks:
        c = container(pod_spec(docs, name), name)
        prefix = settings_cls.model_config.get("env_prefix", "")
        settings = settings_cls.model_validate(
            {k.removeprefix(prefix).lower(): v for k, v in env(c).items() if k.startswith(prefix)}
        )
        grpc_port = getattr(settings, "port")  # noqa: B009 (both classes have it)
        assert port(c, "grpc") == grpc_port
        assert port(c, "metrics") == getattr(settings, "metrics_port")  # noqa: B009
        for probe in ("startupProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": grpc_port, "service": service}, probe
        assert c["livenessProbe"]["grpc"]["port"] == grpc_port
        assert c["livenessProbe"]["grpc"]["service"] == ""  # registered too, per convention


def test_gateway_probes_are_routes_of_the_app(rendered: dict[str, list[Doc]]) -> None:
    from gateway.app import create_app
    from gateway.settings import Settings as GatewaySettings

    c = container(pod_spec(rendered["gpu"], "gateway"), "gateway")
    settings = GatewaySettings(port=int(env(c)["GATEWAY_PORT"]))
    paths = {getattr(route, "path", None) for route in create_app(settings).routes}
    assert port(c, "http") == settings.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] == "http"
        assert c[probe]["httpGet"]["path"] in paths, probe


def test_gateway_metrics_are_scraped_on_their_own_port_only(
    rendered: dict[str, list[Doc]],
) -> None:
    from gateway.settings import Settings as GatewaySettings

    docs = rendered["gpu"]
    c = container(pod_spec(docs, "gateway"), "gateway")
    settings = GatewaySettings(metrics_port=int(env(c)["GATEWAY_METRICS_PORT"]))
    assert port(c, "metrics") == settings.metrics_port != port(c, "http")
    (scrape,) = find(rendered["monitoring"], "PodMonitor", "gateway")["spec"][
        "podMetricsEndpoints"]  # fmt: skip
    assert scrape["port"] == "metrics" and scrape.get("path", "/metrics") == "/metrics"
    # Anyone reaches the API port, only Prometheus's namespace the metrics port.
    public = find(docs, "NetworkPolicy", "gateway")["spec"]["ingress"]
    assert [p["port"] for rule in public for p in rule["ports"]] == [port(c, "http")]
    (monitoring,) = find(docs, "NetworkPolicy", "gateway-from-monitoring")["spec"]["ingress"]
    assert [p["port"] for p in monitoring["ports"]] == [settings.metrics_port]
    assert all("namespaceSelector" in peer for peer in monitoring["from"])
    # The Service (what the Ingress fronts) exposes only the API.
    service_ports = find(docs, "Service", "gateway")["spec"]["ports"]
    assert [p["targetPort"] for p in service_ports] == ["http"]


def test_sidecar_is_native_listens_on_localhost_and_embed_dials_it(
    rendered: dict[str, list[Doc]],
) -> None:
    from metering.sidecar.settings import SidecarSettings

    pod = pod_spec(rendered["gpu"], "embed")
    sidecar = container(pod, "metering-sidecar")
    # A native sidecar: started before embed, stopped after it, so embed's drain is billed.
    assert sidecar in pod["initContainers"] and sidecar["restartPolicy"] == "Always"
    assert sidecar["command"] == ["python", "-m", "metering", "sidecar"]
    settings = SidecarSettings.model_validate(
        {k.removeprefix("METERING_").lower(): v for k, v in env(sidecar).items()}
    )
    assert settings.host == "127.0.0.1"
    assert env(container(pod, "embed"))["EMBED_METERING_ADDR"] == f"127.0.0.1:{settings.port}"
    assert port(sidecar, "sidecar-metrics") == settings.metrics_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"] == {"path": "/metrics", "port": "sidecar-metrics"}
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] != "/tmp"]
    assert settings.spool_path.startswith(mount["mountPath"] + "/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert "emptyDir" in volume


def metric_names(registry: CollectorRegistry) -> dict[str, str]:
    """Every series name the registry exposes, with its metric type."""
    names = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""], "summary": ["_sum", "_count", ""]}
    for family in registry.collect():
        for suffix in suffixes.get(family.type, [""]):
            names[family.name + suffix] = family.type
    return names


@pytest.fixture(scope="module")
def exported_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from prometheus_client import CollectorRegistry

    from embed_service.metrics import EmbedMetrics
    from gateway.metrics import GatewayMetrics
    from intent_embed.call_metrics import CallMetrics
    from intent_embed.drain import Drain
    from metering.server import Metrics as MeteringMetrics
    from metering.sidecar.metrics import SidecarMetrics
    from metering.sidecar.spool import Spool

    spool = Spool(tmp_path_factory.mktemp("spool") / "spool.db", max_events=10)
    names: dict[str, str] = {}
    shared = CollectorRegistry()  # what every GrpcServer adds to its service's registry
    CallMetrics(shared)
    Drain(shared)
    for registry in (EmbedMetrics().registry, GatewayMetrics().registry,
                     MeteringMetrics().registry, SidecarMetrics(spool).registry, shared):
        names.update(metric_names(registry))
    spool.close()
    return names


def test_embed_hpa_scales_on_a_gauge_the_embed_service_exports(
    rendered: dict[str, list[Doc]], exported_metrics: dict[str, str]
) -> None:
    from embed_service.metrics import EmbedMetrics

    for overlay in OVERLAYS:
        hpa = find(rendered[overlay], "HorizontalPodAutoscaler", "embed")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "embed"
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        name = metric["pods"]["metric"]["name"]
        assert metric_names(EmbedMetrics().registry).get(name) == "gauge", name

    adapter = find(rendered["monitoring"], "ConfigMap", "prometheus-adapter-intent-embed")
    (rule,) = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["name"]["as"] == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_alerts_only_use_metrics_the_services_export(
    rendered: dict[str, list[Doc]], exported_metrics: dict[str, str]
) -> None:
    rule_doc = find(rendered["monitoring"], "PrometheusRule", "intent-embed")
    used = set()
    for group in rule_doc["spec"]["groups"]:
        for rule in group["rules"]:
            # Metric names, not label names (grpc_code="..." is a label of one).
            metric = r"\b((?:embed|metering|gateway|grpc)_[a-z_]+)\b(?!\s*=)"
            used |= set(re.findall(metric, rule["expr"]))
    assert used, "no metric found in the alert expressions"
    missing = sorted(used - set(exported_metrics))
    assert not missing, f"alerts use metrics nobody exports: {missing}"


def settings_class(command: list[str]) -> type[BaseSettings]:
    from embed_service.settings import Settings as EmbedSettings
    from gateway.settings import Settings as GatewaySettings
    from metering.settings import Settings as MeteringSettings
    from metering.sidecar.settings import SidecarSettings

    classes: dict[tuple[str, ...], type[BaseSettings]] = {
        ("embed_service",): EmbedSettings,
        ("gateway",): GatewaySettings,
        ("metering",): MeteringSettings,
        ("metering", "migrate"): MeteringSettings,
        ("metering", "sidecar"): SidecarSettings,
    }
    assert command[:2] == ["python", "-m"], command
    return classes[tuple(command[2:])]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_env_var_is_a_setting_of_the_service_and_parses(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    for deployment in deployments(rendered[overlay]):
        for c in all_containers(deployment["spec"]["template"]["spec"]):
            cls = settings_class(c["command"])
            prefix = cls.model_config.get("env_prefix", "")
            values = {}
            for var in c.get("env", []):
                name = var["name"]
                if name in LIBRARY_ENV:
                    continue
                assert name.startswith(prefix), f"{c['name']}: {name} is not a {prefix} setting"
                field = name.removeprefix(prefix).lower()
                assert field in cls.model_fields, f"{c['name']}: {cls.__module__} has no {name}"
                if "value" in var:
                    values[field] = var["value"]
            cls.model_validate(values)  # the values parse (a typo in a number fails here)


def test_clients_dial_the_services_that_front_the_pods(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["gpu"]
    headless = find(docs, "Service", "embed-headless")
    assert headless["spec"]["clusterIP"] == "None"  # DNS lists every pod: round_robin spreads
    embed_port = port(container(pod_spec(docs, "embed"), "embed"), "grpc")
    gateway_env = env(container(pod_spec(docs, "gateway"), "gateway"))
    assert gateway_env["GATEWAY_EMBED_ADDR"] == (
        f"dns:///embed-headless.{NAMESPACE}.svc.cluster.local:{embed_port}"
    )
    metering_port = port(container(pod_spec(docs, "metering"), "metering"), "grpc")
    metering_addr = f"dns:///metering.{NAMESPACE}.svc.cluster.local:{metering_port}"
    assert gateway_env["GATEWAY_METERING_ADDR"] == metering_addr
    sidecar = container(pod_spec(docs, "embed"), "metering-sidecar")
    assert env(sidecar)["METERING_CENTRAL_ADDR"] == metering_addr
    assert find(docs, "Service", "metering")["spec"]["ports"][0]["port"] == metering_port
    assert all(d["metadata"].get("namespace", NAMESPACE) == NAMESPACE for d in docs)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_selectors_and_ports_point_at_real_pods(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in deployments(docs)}

    def selected(selector: dict[str, str]) -> list[dict[str, Any]]:
        found = [t for t in pods.values()
                 if selector.items() <= t["metadata"]["labels"].items()]
        assert found, f"selector {selector} matches no pod"
        return found

    for name, template in pods.items():
        deployment = find(docs, "Deployment", name)
        assert deployment["spec"]["selector"]["matchLabels"].items() <= (
            template["metadata"]["labels"].items()
        )
    for doc in docs:
        if doc["kind"] == "Service":
            for template in selected(doc["spec"]["selector"]):
                names = {p["name"] for c in all_containers(template["spec"])
                         for p in c.get("ports", [])}
                for service_port in doc["spec"]["ports"]:
                    assert service_port["targetPort"] in names, service_port
        elif doc["kind"] == "PodDisruptionBudget":
            selected(doc["spec"]["selector"]["matchLabels"])
        elif doc["kind"] == "HorizontalPodAutoscaler":
            assert doc["spec"]["scaleTargetRef"]["name"] in pods
        elif doc["kind"] == "NetworkPolicy":
            _check_policy_ports(doc, selected)


def _check_policy_ports(policy: Doc, selected: Any) -> None:
    def container_ports(templates: list[dict[str, Any]]) -> set[int]:
        return {int(p["containerPort"]) for t in templates for c in all_containers(t["spec"])
                for p in c.get("ports", [])}

    spec = policy["spec"]
    own = spec["podSelector"].get("matchLabels")
    for rule in spec.get("ingress", []):
        assert own, policy["metadata"]["name"]
        for p in rule.get("ports", []):
            assert p["port"] in container_ports(selected(own)), (policy["metadata"]["name"], p)
    for rule in spec.get("egress", []):
        for peer in rule.get("to", []):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                ports = container_ports(selected(peer["podSelector"]["matchLabels"]))
                for p in rule.get("ports", []):
                    assert p["port"] in ports, (policy["metadata"]["name"], p)


def test_network_policies_open_exactly_the_documented_paths(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["gpu"]
    assert find(docs, "NetworkPolicy", "default-deny")["spec"] == {
        "podSelector": {}, "policyTypes": ["Ingress", "Egress"],
    }

    def ingress_from(policy: str, app: str, number: int) -> bool:
        for rule in find(docs, "NetworkPolicy", policy)["spec"].get("ingress", []):
            peers = [p.get("podSelector", {}).get("matchLabels", {}) for p in rule.get("from", [])]
            if {"app.kubernetes.io/name": app} in peers and any(
                p["port"] == number for p in rule["ports"]
            ):
                return True
        return False

    assert ingress_from("embed", "gateway", 50051)
    assert ingress_from("metering", "gateway", 50052)
    assert ingress_from("metering", "embed", 50052)  # the sidecar in each embed pod
    metering_egress = {p["port"] for rule in find(docs, "NetworkPolicy", "metering")["spec"][
        "egress"] for p in rule["ports"]}
    assert metering_egress == {5432, 443}  # database and Stripe


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_termination_grace_covers_the_drain(rendered: dict[str, list[Doc]], overlay: str) -> None:
    pod = pod_spec(rendered[overlay], "embed")
    embed = container(pod, "embed")
    sidecar = container(pod, "metering-sidecar")
    drain = (
        embed["lifecycle"]["preStop"]["sleep"]["seconds"]
        + float(env(embed)["EMBED_SHUTDOWN_GRACE_S"])
        + float(env(sidecar)["METERING_SHUTDOWN_GRACE_S"])
    )
    assert pod["terminationGracePeriodSeconds"] >= drain
    liveness = embed["livenessProbe"]
    # A draining server reports NOT_SERVING; liveness must not kill it before it is done.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= float(
        env(embed)["EMBED_SHUTDOWN_GRACE_S"]
    )
    startup = embed["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120  # model load + warm-up


def test_gpu_overlay_puts_one_gpu_per_embed_pod_on_gpu_nodes(
    rendered: dict[str, list[Doc]],
) -> None:
    pod = pod_spec(rendered["gpu"], "embed")
    resources = container(pod, "embed")["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    assert env(container(pod, "embed"))["EMBED_DEVICE"] == "cuda"

    dev = pod_spec(rendered["cpu-dev"], "embed")
    assert "nvidia.com/gpu" not in yaml.safe_dump(rendered["cpu-dev"])
    assert "nodeSelector" not in dev and "tolerations" not in dev
    assert env(container(dev, "embed"))["EMBED_DEVICE"] == "cpu"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_pod_is_non_root_with_bounded_resources(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    uid = dockerfile_uid()
    for deployment in deployments(rendered[overlay]):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == uid  # the image's user owns nothing else
        assert pod["automountServiceAccountToken"] is False
        for c in all_containers(pod):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == [
                "ALL"
            ]
            assert sc["readOnlyRootFilesystem"] is True
            # HOME and temp files live in /tmp (see the Dockerfile): it must be writable.
            assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])}, c["name"]
            for kind in ("cpu", "memory"):
                assert c["resources"]["requests"][kind] and c["resources"]["limits"][kind]


# -- the image ---------------------------------------------------------------------------


def dockerfile_stages() -> dict[str, list[str]]:
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in (REPO_ROOT / "Dockerfile").read_text().splitlines():
        match = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", line, re.IGNORECASE)
        if match:
            current = stages.setdefault(match.group(1), [])
        current.append(line)
    return stages


def dockerfile_uid() -> int:
    uids = {re.match(r"USER\s+(\d+)", line).group(1)  # type: ignore[union-attr]
            for lines in dockerfile_stages().values() for line in lines
            if line.startswith("USER")}
    assert len(uids) == 1, uids
    return int(uids.pop())


def image_requirements(stage: str) -> set[str]:
    """Names of what the stage's `pip install ".[extras]"` installs, per pyproject.toml."""
    (extras,) = [m.group(1) for line in dockerfile_stages()[stage]
                 if (m := re.search(r'pip install "\.\[([\w,]+)\]"', line))]  # fmt: skip
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names: set[str] = set()
    wanted, seen = extras.split(","), set()
    requirements = list(project["dependencies"])
    while wanted:
        extra = wanted.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            self_ref = re.fullmatch(r"intent-embed\[([\w,]+)\]", requirement)
            if self_ref:
                wanted.extend(self_ref.group(1).split(","))
            else:
                requirements.append(requirement)
    for requirement in requirements:
        names.add(re.match(r"[\w.-]+", requirement).group(0).lower().replace("_", "-"))  # type: ignore[union-attr]
    return names


def test_images_run_non_root_and_pin_torch_before_the_project() -> None:
    stages = dockerfile_stages()
    text = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base.group(1))
    for final in ("app", "embed"):
        assert any(line.startswith("USER 10001") for line in stages[final]), final
    assert dockerfile_uid() != 0

    build = "\n".join(stages["build-embed"])
    pinned = re.search(r"ARG TORCH_SPEC=(\S+)", build)
    makefile_pin = re.search(r"TORCH_SPEC \?= (\S+)", (REPO_ROOT / "Makefile").read_text())
    assert pinned and makefile_pin and pinned.group(1) == makefile_pin.group(1)
    assert "==" in pinned.group(1)
    assert build.index('"$TORCH_SPEC"') < build.index('pip install ".[embed]"')

    # The app image's requirements: the extras its pip install names, read from pyproject.
    app_requirements = image_requirements("build-app")
    assert "torch" not in app_requirements and "transformers" not in app_requirements
    assert {"grpcio", "fastapi", "sqlmodel", "stripe", "prometheus-client"} <= app_requirements
    assert "torch" in image_requirements("build-embed")


def test_each_container_runs_a_module_its_image_contains(rendered: dict[str, list[Doc]]) -> None:
    stages = dockerfile_stages()
    copied = {
        image: {m.group(1) for line in stages[f"build-{image}"]
                if (m := re.match(r"COPY (\w+) ", line))}
        for image in ("app", "embed")
    }
    ignored = (REPO_ROOT / ".dockerignore").read_text()
    for overlay in OVERLAYS:
        for deployment in deployments(rendered[overlay]):
            for c in all_containers(deployment["spec"]["template"]["spec"]):
                image = c["image"].split(":")[0].removeprefix("intent-embed/")
                module = c["command"][2]
                assert module in copied[image], (c["name"], image, module)
                assert f"!{module}/" in ignored, f".dockerignore leaves out {module}"


def test_the_app_image_runs_without_the_model_stack() -> None:
    """The app image has no torch: gateway, metering and the sidecar must not import it."""
    blocked = image_requirements("build-embed") - image_requirements("build-app")
    assert "torch" in blocked
    probe = (
        "import sys\n"
        f"blocked = {sorted(blocked)!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0].replace('_', '-') in set(blocked) | {'sklearn'}:\n"
        "            raise ImportError(f'{name} is not in the app image')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import gateway.__main__, gateway.app, metering.server, metering.sidecar.app\n"
        "import metering.__main__\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]


def _secret_refs(c: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_caller_of_metering_proves_its_role_with_a_token_from_one_secret(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    expected = {
        ("metering", "metering"): {
            "METERING_GATEWAY_TOKENS": "gateway", "METERING_EMBED_TOKENS": "embed",
            "METERING_SIDECAR_TOKENS": "sidecar",
        },
        ("embed", "embed"): {"EMBED_METERING_TOKEN": "embed"},
        ("embed", "metering-sidecar"): {
            "METERING_EMBED_TOKENS": "embed", "METERING_CENTRAL_TOKEN": "sidecar",
        },
        ("gateway", "gateway"): {"GATEWAY_METERING_TOKEN": "gateway"},
    }  # fmt: skip
    for (deployment, name), wanted in expected.items():
        refs = _secret_refs(container(pod_spec(docs, deployment), name))
        for variable, key in wanted.items():
            assert refs.get(variable) == ("service-tokens", key), (overlay, name, variable)
        assert "METERING_INSECURE_NO_AUTH" not in env(container(pod_spec(docs, deployment), name))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_only_the_traces_overlay_sends_spans_and_it_samples(
    rendered: dict[str, list[Doc]], overlay: str
) -> None:
    docs = rendered[overlay]
    services = [("embed", "embed"), ("embed", "metering-sidecar"), ("gateway", "gateway"),
                ("metering", "metering")]  # fmt: skip
    for deployment, name in services:
        variables = env(container(pod_spec(docs, deployment), name))
        if overlay != "gpu-traces":
            assert not any(v.startswith("OTEL_") for v in variables), (overlay, name)
            continue
        assert variables["OTEL_EXPORTER_OTLP_ENDPOINT"].endswith(":4318"), name
        assert variables["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio", name
        assert 0 < float(variables["OTEL_TRACES_SAMPLER_ARG"]) <= 0.1, name
    if overlay == "gpu-traces":
        policy = find(docs, "NetworkPolicy", "allow-otel-collector")["spec"]
        assert policy["podSelector"] == {} and policy["policyTypes"] == ["Egress"]
        assert [p["port"] for rule in policy["egress"] for p in rule["ports"]] == [4318]
