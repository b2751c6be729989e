"""Custom resources validated offline against the pinned upstream CRDs
(tests/deploy/crds): each CRD's OpenAPI v3 schema turned into JSON Schema the
way kubeconform's openapi2jsonschema does, and its CEL rules
(x-kubernetes-validations) evaluated with cel-python where they can be.

What the conversion does, as kubeconform's strict mode:
- an object schema with `properties` and no `additionalProperties` gets
  `additionalProperties: false`, so an unknown (misspelt) field fails, unless
  it says `x-kubernetes-preserve-unknown-fields`;
- `x-kubernetes-int-or-string` accepts an integer or a string;
- `nullable: true` accepts null.

The API server does more (defaulting, ratcheting, format checks); this is the
part that catches typos, wrong types, unknown fields and broken rules."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parents[1] / "deploy" / "crds"


@dataclass(frozen=True)
class Violation:
    path: str
    message: str


@dataclass
class CelReport:
    """Every rule met at a place the manifest fills: held, broken, or not evaluated (and why)."""

    held: list[str] = field(default_factory=list)
    broken: list[Violation] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rule, why)


def sources() -> dict[str, dict[str, str]]:
    listed = json.loads((CRD_DIR / "sources.json").read_text())
    return {name: entry for name, entry in listed.items() if name != "_"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def strict_schema(node: Any) -> Any:
    """kubeconform's conversion of one CRD schema (a new tree: the input is left as it is)."""
    if isinstance(node, list):
        return [strict_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_schema(value) for key, value in node.items()}
    if "properties" in out and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@dataclass(frozen=True)
class Crd:
    group: str
    kind: str
    schemas: dict[str, dict[str, Any]]  # served version -> openAPIV3Schema (as upstream wrote it)

    def api_versions(self) -> set[str]:
        return {f"{self.group}/{version}" for version in self.schemas}

    def schema(self, api_version: str) -> dict[str, Any]:
        return self.schemas[api_version.rsplit("/", 1)[1]]


@cache
def crds() -> dict[tuple[str, str], Crd]:
    """(apiVersion, kind) -> its CRD, for every served version of the pinned files."""
    found: dict[tuple[str, str], Crd] = {}
    for name in sources():
        doc = yaml.safe_load((CRD_DIR / name).read_text())
        spec = doc["spec"]
        schemas = {v["name"]: v["schema"]["openAPIV3Schema"] for v in spec["versions"] if v.get("served")}
        crd = Crd(spec["group"], spec["names"]["kind"], schemas)
        for api_version in crd.api_versions():
            found[(api_version, crd.kind)] = crd
    return found


@cache
def _validator(api_version: str, kind: str) -> Any:
    from jsonschema import Draft4Validator  # OpenAPI 3.0 schemas: draft 4's boolean exclusiveMinimum

    return Draft4Validator(strict_schema(crds()[(api_version, kind)].schema(api_version)))


def schema_violations(doc: dict[str, Any]) -> list[Violation]:
    """What the structural schema refuses in one custom resource."""
    validator = _validator(doc["apiVersion"], doc["kind"])
    return [
        Violation("/".join(str(p) for p in error.absolute_path) or "(root)", error.message)
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def cel_report(doc: dict[str, Any]) -> CelReport:
    """Evaluate every CEL rule of the schema at each place the document fills."""
    report = CelReport()
    schema = crds()[(doc["apiVersion"], doc["kind"])].schema(doc["apiVersion"])
    _walk(schema, doc, "", report)
    return report


def _walk(schema: dict[str, Any], value: Any, path: str, report: CelReport) -> None:
    if value is None:
        return
    for rule in schema.get("x-kubernetes-validations", ()):
        _evaluate(rule, value, path, report)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if sub is not None:
                _walk(sub, item, f"{path}/{key}", report)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            _walk(schema["items"], item, f"{path}/{i}", report)


def _evaluate(rule: dict[str, Any], value: Any, path: str, report: CelReport) -> None:
    import celpy

    text = rule["rule"]
    if "oldSelf" in text:
        report.skipped.append((text, "a transition rule: it compares with the stored object"))
        return
    try:
        env = celpy.Environment()
        program = env.program(env.compile(text))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
    except Exception as exc:  # a function of Kubernetes' CEL library that cel-python lacks, or an error
        report.skipped.append((text, f"cel-python cannot evaluate it: {type(exc).__name__}: {exc}"[:300]))
        return
    if isinstance(result, celpy.CELEvalError):
        report.skipped.append((text, f"cel-python cannot evaluate it: {result}"[:300]))
    elif bool(result):
        report.held.append(text)
    else:
        message = rule.get("message") or rule.get("messageExpression") or f"failed rule: {text}"
        report.broken.append(Violation(path or "(root)", message))
