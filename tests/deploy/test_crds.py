"""Every overlay renders and validates offline: built-in kinds against
Kubernetes' own schemas (kubernetes-validate), custom resources against the
pinned upstream CRDs in tests/deploy/crds (JSON Schema as kubeconform makes
it, plus their CEL rules evaluated with cel-python where it can)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.crds import CRD_DIR, cel_report, crds, schema_violations, sha256, sources
from tests.support.deploy import ALL_OVERLAYS, find, render

# The oldest release with the preStop sleep action on by default, and the newest
# kubernetes-validate ships schemas for.
K8S_VERSIONS = ("1.33", "1.37")
# The Prometheus Operator's kinds: parsed field by field in test_deploy.py.
MONITORING = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
BUILTIN_KINDS = {"Namespace", "ServiceAccount", "Service", "Deployment", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "NetworkPolicy", "PersistentVolumeClaim", "ConfigMap", "Role",
                 "RoleBinding"}  # fmt: skip
# What each overlay must hold beyond the built-in kinds.
CUSTOM = {
    "cpu-tiny": MONITORING,
    "gpu-70b-tp4": MONITORING,
    "gpu-70b-2node": MONITORING | {("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")},
    "gpu-70b-2node-keda": MONITORING
    | {("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"), ("keda.sh/v1alpha1", "ScaledObject")},
    "routing": MONITORING
    | {("inference.networking.k8s.io/v1", "InferencePool"), ("gateway.networking.k8s.io/v1", "HTTPRoute")},
    "train-70b": {("trainer.kubeflow.org/v1alpha1", "TrainJob")},
}


BUILTIN_GROUPS = {"", "apps", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["apiVersion"], doc["kind"]


def _group(doc: dict[str, Any]) -> str:
    group, _, _ = doc["apiVersion"].rpartition("/")
    return group


@pytest.fixture(scope="module", params=ALL_OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_the_pinned_crds_are_the_recorded_files() -> None:
    listed = sources()
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == set(listed)
    for name, entry in listed.items():
        assert sha256(CRD_DIR / name) == entry["sha256"], f"{name} differs from {entry['repository']} {entry['tag']}"
        assert entry["license"] == "Apache-2.0" and len(entry["commit"]) == 40
    assert {crd.kind for crd in crds().values()} == {e["kind"] for e in listed.values()}


def test_builtin_kinds_validate(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    import kubernetes_validate

    overlay, docs = rendered
    builtin = [d for d in docs if _group(d) in BUILTIN_GROUPS]
    assert {d["kind"] for d in builtin} <= BUILTIN_KINDS, "a kind neither validated here nor parsed elsewhere"
    for version in K8S_VERSIONS:
        for doc in builtin:
            kubernetes_validate.validate(doc, version, strict=True)
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: one namespace for everything"


def test_custom_resources_validate_against_the_pinned_crds(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    assert {_key(d) for d in docs if _group(d) not in BUILTIN_GROUPS} == CUSTOM[overlay]
    for doc in (d for d in docs if _key(d) in crds()):
        assert schema_violations(doc) == [], f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        report = cel_report(doc)
        assert report.broken == [], f"{overlay}: {doc['kind']} breaks {report.broken}"
        print(f"\n[{overlay}] {doc['kind']}: {len(report.held)} CEL rules held, {len(report.skipped)} not evaluated")
        for rule, why in report.skipped:
            assert "oldSelf" in rule, f"a CEL rule left unchecked: {rule!r}: {why}"


def test_rules_that_need_a_stored_object_are_the_only_ones_skipped() -> None:
    """The CEL rules met by the overlays' resources: cel-python evaluates all of
    them but transition rules (self == oldSelf), which need the stored object."""
    held = 0
    for overlay in ("routing", "train-70b", "gpu-70b-2node-keda"):
        for doc in (d for d in render(overlay) if _key(d) in crds()):
            report = cel_report(doc)
            held += len(report.held)
            assert all(rule == "self == oldSelf" for rule, _ in report.skipped), report.skipped
    assert held >= 20


TYPOS = {
    # overlay, kind: (path to a mapping, a key to misspell)
    ("gpu-70b-2node", "LeaderWorkerSet"): (("spec", "leaderWorkerTemplate"), "restartPolicy"),
    ("routing", "InferencePool"): (("spec",), "targetPorts"),
    ("routing", "HTTPRoute"): (("spec",), "parentRefs"),
    ("train-70b", "TrainJob"): (("spec", "trainer"), "numProcPerNode"),
    ("gpu-70b-2node-keda", "ScaledObject"): (("spec",), "maxReplicaCount"),
}


@pytest.mark.parametrize(("overlay", "kind"), sorted(TYPOS))
def test_a_typo_in_a_custom_resource_fails(overlay: str, kind: str) -> None:
    doc = copy.deepcopy(find(render(overlay), kind))
    path, key = TYPOS[(overlay, kind)]
    node = doc
    for part in path:
        node = node[part]
    node[key[:-1]] = node.pop(key)  # e.g. restartPolicy -> restartPolic
    problems = [v.message for v in schema_violations(doc)]
    assert any(f"'{key[:-1]}'" in m and "not allowed" in m for m in problems), problems


def test_wrong_types_and_broken_rules_fail() -> None:
    lws = copy.deepcopy(find(render("gpu-70b-2node"), "LeaderWorkerSet"))
    lws["spec"]["leaderWorkerTemplate"]["size"] = "two"
    assert any("is not of type 'integer'" in v.message for v in schema_violations(lws))
    pool = copy.deepcopy(find(render("routing"), "InferencePool"))
    pool["spec"]["targetPorts"] = [{"number": 8000}, {"number": 8000}]  # CEL: port numbers are unique
    assert schema_violations(pool) == [] and cel_report(pool).broken
    job = copy.deepcopy(find(render("train-70b"), "TrainJob"))
    job["metadata"]["name"] = "Lemur_70B"  # CEL: a DNS label
    assert cel_report(job).broken
    scaler = copy.deepcopy(find(render("gpu-70b-2node-keda"), "ScaledObject"))
    scaler["spec"]["minReplicaCount"] = 3  # CEL: at most maxReplicaCount
    assert schema_violations(scaler) == [] and cel_report(scaler).broken
