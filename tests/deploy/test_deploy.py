"""deploy/kubernetes and deploy/compose, for the single-node overlays: probes,
ports, drain times, scaling metric and scrape targets agree with the
server's code (schemas: test_crds.py; the multi-node overlays:
test_deploy_scaling.py).

The Prometheus Operator's ServiceMonitor and PrometheusRule are checked here
by parsing them, field by field, not against a schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lemur.plan import plan
from lemur.server.config import ABORT_GRACE_S, HTTP_CLOSE_GRACE_S
from tests.support.deploy import (
    COMPOSE_DIR,
    K8S_DIR,
    OVERLAYS,
    REPO,
    alert_exprs,
    compose,
    container,
    dashboard_queries,
    default_port,
    find,
    flag_value,
    gateway_services,
    keda_queries,
    load_yaml,
    render,
    routes,
    shutdown_timeout,
)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_probes_ports_and_service_match_the_server(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    r, port = routes(), default_port()
    deployment = find(docs, "Deployment", "lemur")
    c = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports["http"] == port
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("LEMUR_PORT", str(port)) == str(port)
    expected = {"startupProbe": r.health, "livenessProbe": r.health, "readinessProbe": r.ready}
    for probe, path in expected.items():
        get = c[probe]["httpGet"]
        assert get["path"] == path and path in r.get, (probe, get)
        assert ports.get(get["port"], get["port"]) == port
    startup = c["startupProbe"]
    allowed_s = startup["failureThreshold"] * startup["periodSeconds"]
    assert allowed_s >= (30 * 60 if overlay.startswith("gpu-70b") else 60), allowed_s
    service = find(docs, "Service", "lemur")
    svc = {p["name"]: ports.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert svc["http"] == port
    # Prometheus scrapes the metrics port, where /metrics has the per-key series (not the API port's).
    assert svc["metrics"] == ports["metrics"] == int(env["LEMUR_METRICS_PORT"])
    monitor = find(docs, "ServiceMonitor", "lemur")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


ENGINE_SHUTDOWN_S = 10  # vLLM's engine processes exiting after the HTTP server (an allowance, not measured)


def drain_budget(drain_s: float) -> float:
    """SIGTERM to exit: the drain, aborted streams' last events, closing connections, the engine."""
    return drain_s + ABORT_GRACE_S + HTTP_CLOSE_GRACE_S + ENGINE_SHUTDOWN_S


def test_drain_fits_in_the_grace_period(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod = find(docs, "Deployment", "lemur")["spec"]["template"]["spec"]
    c = container(find(docs, "Deployment", "lemur"))
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = shutdown_timeout(c["args"])
    needed = pre_stop + drain_budget(drain)
    assert pod["terminationGracePeriodSeconds"] >= needed, (pod["terminationGracePeriodSeconds"], needed)


def test_security_context_and_writable_volumes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod = find(docs, "Deployment", "lemur")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"] + pod.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["requests"] and c["resources"]["limits"]
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        # With a read-only root, HOME (caches) and /tmp must be writable emptyDirs.
        assert "emptyDir" in mounts["/tmp"] and "emptyDir" in mounts["/home/lemur"]
    (main,) = [c for c in pod["containers"] if c["name"] == "lemur"]
    main_mounts = {m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"]}
    assert main_mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"


def test_gpu_overlay_serves_70b_on_4_gpus_from_a_pvc() -> None:
    docs = render("gpu-70b-tp4")
    deployment = find(docs, "Deployment", "lemur")
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    tp = int(flag_value(c["args"], "--tensor-parallel-size") or 1)
    gpus = {int(c["resources"][kind]["nvidia.com/gpu"]) for kind in ("requests", "limits")}
    assert tp == 4 and gpus == {4}
    assert "--no-playground" in c["args"]  # a production API: no chat page by default
    (init,) = pod["initContainers"]
    assert init["args"] == ["fetch"] and init["image"] == c["image"]
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    main_env = {e["name"]: e.get("value") for e in c["env"]}
    assert init_env["LEMUR_MODEL_DIR"] == main_env["LEMUR_MODEL_DIR"] and init_env["LEMUR_MODEL_REPO"]
    assert main_env["HF_HUB_OFFLINE"] == "1" and "LEMUR_MODEL_REPO" not in main_env
    volumes = {v["name"]: v for v in pod["volumes"]}
    models = next(m for m in init["volumeMounts"] if init_env["LEMUR_MODEL_DIR"].startswith(m["mountPath"]))
    claim = volumes[models["name"]]["persistentVolumeClaim"]["claimName"]
    assert find(docs, "PersistentVolumeClaim", claim)
    token_dir = str(Path(init_env["HF_TOKEN_FILE"]).parent)
    token_mount = next(m for m in init["volumeMounts"] if m["mountPath"] == token_dir)
    assert "secret" in volumes[token_mount["name"]]
    # The flags it serves with fit the GPUs it asks for (lemur plan, H100 80GB).
    p = plan("lemur-70b-chat", "h100", tp, max_model_len=int(flag_value(c["args"], "--max-model-len") or 4096),
             gpu_memory_utilization=float(flag_value(c["args"], "--gpu-memory-utilization") or 0.9))  # fmt: skip
    assert p.fits and p.full_length_sequences >= 64
    egress_ports = {p["port"] for rule in find(docs, "NetworkPolicy")["spec"]["egress"] for p in rule["ports"]}
    assert 443 in egress_ports, "the init container downloads from the Hub over HTTPS"


def test_network_policy_opens_the_api_port_and_the_metrics_port_to_prometheus_alone(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployment = find(docs, "Deployment", "lemur")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    policy = find(docs, "NetworkPolicy", "lemur")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    c = container(deployment)
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    api, metrics = policy["ingress"]
    opened = {port_names.get(p["port"], p["port"]) for p in api["ports"]}
    assert opened == {default_port()}, opened  # the API port, nothing else
    # The metrics port shows key names and per-key traffic: the monitoring namespace only.
    assert [port_names.get(p["port"], p["port"]) for p in metrics["ports"]] == [port_names["metrics"]]
    (source,) = metrics["from"]
    assert source == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert {"Ingress", "Egress"} <= set(policy["policyTypes"])


def test_pdb_hpa_and_adapter_rule(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    labels = find(docs, "Deployment", "lemur")["spec"]["template"]["metadata"]["labels"]
    assert find(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = find(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "lemur"}
    (metric,) = hpa["metrics"]
    adapter = load_yaml(K8S_DIR / "prometheus-adapter-values.yaml")
    names = {rule["name"]["as"]: rule for rule in adapter["rules"]["custom"]}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in names
    assert hpa["minReplicas"] >= 1 and hpa["maxReplicas"] > hpa["minReplicas"]


def test_service_monitor_and_prometheus_rule(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    service = find(docs, "Service", "lemur")
    monitor = find(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == routes().metrics
    rule = find(docs, "PrometheusRule")["spec"]
    alerts = load_yaml(COMPOSE_DIR / "prometheus" / "alerts.yml")
    assert rule["groups"] == alerts["groups"], "the Kubernetes and compose alerts differ"
    # `up{job="lemur"}`: the job label a ServiceMonitor gives is the Service's name.
    assert any('job="lemur"' in e for e in alert_exprs(rule["groups"])) and service["metadata"]["name"] == "lemur"


def test_compose_parses_and_references_existing_files() -> None:
    spec = compose()
    for name, svc in spec["services"].items():
        if "build" in svc:
            context = (COMPOSE_DIR / svc["build"]["context"]).resolve()
            assert (context / svc["build"]["dockerfile"]).is_file(), name
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source}"
            else:
                assert source in spec["volumes"], f"{name}: undeclared volume {source}"
        for secret in svc.get("secrets", []):
            assert secret in spec["secrets"], f"{name}: undeclared secret {secret}"
    assert (COMPOSE_DIR / "../..").resolve() == REPO


def test_compose_gateways_match_the_server() -> None:
    spec, port = compose(), default_port()
    gateways = gateway_services(spec)
    assert {p for svc in gateways.values() for p in svc["profiles"]} == {"gpu", "cpu"}
    for name, svc in gateways.items():
        assert [p.split(":")[-1] for p in svc["ports"]] == [str(port)], name
        assert "lemur" in svc["networks"]["default"]["aliases"]
        grace = svc["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= drain_budget(shutdown_timeout(svc["command"])), name
    gpu = gateways["lemur-gpu"]
    (devices,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices["count"] == int(flag_value(gpu["command"], "--tensor-parallel-size") or 1) == 4
    assert gpu["environment"]["HF_TOKEN_FILE"] == "/run/secrets/" + gpu["secrets"][0]


def test_prometheus_scrapes_the_gateway_and_loads_the_mounted_rules() -> None:
    spec = compose()
    prom = load_yaml(COMPOSE_DIR / "prometheus" / "prometheus.yml")
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "lemur"]
    assert job["metrics_path"] == routes().metrics
    # The gateways' --metrics-port (env LEMUR_METRICS_PORT), where /metrics has the per-key series.
    ports = {s["environment"]["LEMUR_METRICS_PORT"] for s in spec["services"].values()
             if "LEMUR_API_KEYS" in s.get("environment", {})}  # fmt: skip
    assert job["static_configs"][0]["targets"] == [f"lemur:{port}" for port in ports] and len(ports) == 1
    mounted = {v.split(":")[1]: v.split(":")[0] for v in spec["services"]["prometheus"]["volumes"]}
    for rule_file in prom["rule_files"]:
        assert (COMPOSE_DIR / mounted[rule_file]).is_file(), rule_file


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    import json

    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: COMPOSE_DIR / v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    provisioning = mounts["/etc/grafana/provisioning"]
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = load_yaml(provisioning / "dashboards" / "lemur.yml")["providers"]
    dashboards = mounts[provider["options"]["path"]]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboard = json.loads((dashboards / Path(home).name).read_text())
    uids = {t["datasource"]["uid"] for panel in dashboard["panels"] for t in panel["targets"]}
    assert uids == {datasource["uid"]}
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "errors", "first token", "per output token", "end-to-end", "tokens per second",
                  "running and waiting", "kv-cache", "api key"):  # fmt: skip
        assert topic in titles, topic


def test_every_promql_expression_parses() -> None:
    """Dashboard panels, alert rules and the adapter's queries are valid PromQL
    (Grafana's and prometheus-adapter's template variables filled in), and every
    histogram_quantile keeps the `le` label it needs."""
    import json
    import re

    import promql_parser

    dashboard = json.loads((COMPOSE_DIR / "grafana" / "dashboards" / "lemur.json").read_text())
    adapter = load_yaml(K8S_DIR / "prometheus-adapter-values.yaml")["rules"]["custom"]
    exprs = [q for q in dashboard_queries(dashboard) if not q.startswith("label_values(")]
    exprs += alert_exprs(load_yaml(COMPOSE_DIR / "prometheus" / "alerts.yml")["groups"])
    exprs += [rule["seriesQuery"] for rule in adapter] + keda_queries()
    adapter_fills = {"<<.Series>>": "lemur:num_requests_waiting", "<<.LabelMatchers>>": 'namespace="lemur"',
                     "<<.GroupBy>>": "pod"}  # fmt: skip
    for rule in adapter:
        query = rule["metricsQuery"]
        for var, value in adapter_fills.items():
            query = query.replace(var, value)
        exprs.append(query)
    assert len(exprs) >= 10
    fills = {"$__rate_interval": "5m", "$__interval": "1m", "$__all": ".*", "$model": ".*"}
    for expr in exprs:
        filled = expr
        for var, value in fills.items():
            filled = filled.replace(var, value)
        assert "$" not in filled and "<<" not in filled, f"unfilled template variable in {expr!r}"
        promql_parser.parse(filled)  # raises ValueError on a syntax error
        if "histogram_quantile" in filled:
            groups = re.findall(r"\bby\s*\(([^)]*)\)", filled)
            assert any("le" in {g.strip() for g in group.split(",")} for group in groups), expr
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(lemur:http_requests_total[5m])")  # the check can fail


def test_deployments_fail_closed() -> None:
    """No keys, no server: compose has no default keys or Grafana password and
    publishes on loopback; the pods' key Secret is required."""
    spec = compose()
    for name, svc in gateway_services(spec).items():
        keys = svc["environment"]["LEMUR_API_KEYS"]
        assert keys.startswith("${LEMUR_API_KEYS:?"), name  # compose refuses to run without it
    assert spec["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD:?"
    )
    for name, svc in spec["services"].items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"
    for overlay in OVERLAYS:
        server = container(find(render(overlay), "Deployment", "lemur"))
        (keys,) = [e for e in server["env"] if e["name"] == "LEMUR_API_KEYS"]
        assert keys["valueFrom"]["secretKeyRef"].get("optional", False) is False, overlay
