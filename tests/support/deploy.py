"""What the deployment tests compare the files under deploy/ with: the
server's real routes and defaults, read from the code, and small parsers for
Dockerfiles, compose files, kustomize output and PromQL."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S_DIR = DEPLOY / "kubernetes"
DOCKERFILES = (REPO / "Dockerfile", DEPLOY / "docker" / "cpu.Dockerfile")
ENTRYPOINT = DEPLOY / "docker" / "entrypoint.sh"
OVERLAYS = ("cpu-tiny", "gpu-70b-tp4")  # one Deployment of single-node replicas
# Every overlay: the single-node ones, a model across two nodes (LeaderWorkerSet;
# scaled by the HPA, or by KEDA), routing by load (InferencePool), and training (TrainJob).
ALL_OVERLAYS = (*OVERLAYS, "gpu-70b-2node", "gpu-70b-2node-keda", "routing", "train-70b")
KUBECTL = shutil.which("kubectl")
# Labels that Prometheus adds to every scraped series (target labels), not the server.
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}


@dataclass(frozen=True)
class Routes:
    """GET/POST paths of the FastAPI app, and the paths of the probe handlers."""

    get: frozenset[str]
    health: str
    ready: str
    metrics: str


@cache
def routes() -> Routes:
    from fastapi.routing import APIRoute

    from lemur.server import routes as handlers
    from lemur.server.app import create_app
    from lemur.server.config import GatewayConfig

    app = create_app(GatewayConfig(), lambda: None)  # the engine factory runs only at start-up
    api = [r for r in app.routes if isinstance(r, APIRoute)]

    def path_of(endpoint: object) -> str:
        (path,) = [r.path for r in api if r.endpoint is endpoint and "GET" in r.methods]
        return path

    gets = frozenset(r.path for r in api if "GET" in r.methods)
    return Routes(gets, path_of(handlers.health), path_of(handlers.ready), path_of(handlers.metrics))


def default_port() -> int:
    from lemur.server.config import DEFAULT_PORT

    return DEFAULT_PORT


def default_shutdown_timeout() -> float:
    from lemur.server.config import GatewayConfig

    return GatewayConfig().shutdown_timeout


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag VALUE` or `--flag=VALUE` in an argument list."""
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def shutdown_timeout(args: list[str]) -> float:
    value = flag_value(args, "--shutdown-timeout")
    return float(value) if value is not None else default_shutdown_timeout()


# ---- Dockerfiles ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        lines.append(current + line)
        current = ""
    out = []
    for line in lines:
        keyword, _, value = line.partition(" ")
        out.append(Instruction(keyword.upper(), value.strip()))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last_from = max(i for i, ins in enumerate(instructions) if ins.keyword == "FROM")
    return instructions[last_from:]


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.value):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(value: str) -> list[str]:
    """An instruction's JSON (exec) form; raises if it is the shell form."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


# ---- YAML, compose and kustomize -----------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE_DIR / "compose.yaml")


def gateway_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in spec["services"].items() if name.startswith("lemur")}


def render(overlay: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` of one overlay, as documents."""
    if KUBECTL is None:
        pytest.skip("kubectl is not installed: cannot render the kustomize overlays")
    out = subprocess.run([KUBECTL, "kustomize", str(K8S_DIR / "overlays" / overlay)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str = "lemur") -> dict[str, Any]:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


# ---- PromQL --------------------------------------------------------------------------------------

_METRIC = re.compile(r"\b(?:lemur|vllm):[A-Za-z0-9_:]+")
_BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def promql_metrics(expr: str) -> set[str]:
    """Series names an expression selects (our metrics all carry a `lemur:` or `vllm:` prefix)."""
    return set(_METRIC.findall(expr))


def promql_labels(expr: str) -> set[str]:
    """Label names an expression groups by or matches on."""
    labels = {label.strip() for group in _BY.findall(expr) for label in group.split(",") if label.strip()}
    return labels | set(_MATCHER.findall(expr))


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        queries.append(query["query"] if isinstance(query, dict) else str(query))
    return queries


def keda_queries() -> list[str]:
    """The Prometheus queries of the KEDA overlay's ScaledObject triggers."""
    scaled = load_yaml(K8S_DIR / "overlays" / "gpu-70b-2node-keda" / "scaledobject.yaml")
    return [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"]


def alert_exprs(groups: list[dict[str, Any]]) -> list[str]:
    return [rule["expr"] for group in groups for rule in group["rules"]]
