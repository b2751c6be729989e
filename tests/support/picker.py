"""What the Gateway API Inference Extension's endpoint picker (EPP) reads
from a model server's /metrics: the series its `core-metrics-extractor`
takes for lemur pods in the routing overlay's EndpointPickerConfig, with
the labels the picker reads from each (names, types and labels)."""

from __future__ import annotations

from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.deploy import K8S_DIR

PICKER_CONFIG = K8S_DIR / "overlays" / "routing" / "endpoint-picker.yaml"
# The labels the picker reads from info-style series (its defaults: block_size and num_gpu_blocks).
INFO_LABELS = {"cacheInfoSpec": ("block_size", "num_gpu_blocks"),
               "loraSpec": ("running_lora_adapters", "waiting_lora_adapters", "max_lora")}  # fmt: skip
LORA_INFO = ("vllm:lora_requests_info", INFO_LABELS["loraSpec"])
# The picker's built-in engine config for vLLM pods (gateway-api-inference-extension
# v1.5.0, pkg/epp/framework/plugins/datalayer/extractor/metrics/factories.go).
VLLM_DEFAULT_READS: dict[str, tuple[str, ...]] = {
    "vllm:num_requests_waiting": (),
    "vllm:num_requests_running": (),
    "vllm:kv_cache_usage_perc": (),  # 0 to 1
    "vllm:cache_config_info": INFO_LABELS["cacheInfoSpec"],
}


def picker_config() -> dict[str, Any]:
    (configmap,) = [d for d in yaml.safe_load_all(PICKER_CONFIG.read_text()) if d["kind"] == "ConfigMap"]
    (text,) = configmap["data"].values()
    return yaml.safe_load(text)


def picker_reads(with_lora: bool = False) -> dict[str, tuple[str, ...]]:
    """series -> the labels the picker reads from it, for the engine config of lemur pods
    (LoRA's series only where the server serves adapters)."""
    (extractor,) = [p for p in picker_config()["plugins"] if p["type"] == "core-metrics-extractor"]
    params = extractor["parameters"]
    (engine,) = [e for e in params["engineConfigs"] if e["name"] == params["defaultEngine"]]
    specs = {k: v for k, v in engine.items() if k.endswith("Spec") and (with_lora or k != "loraSpec")}
    return {series: INFO_LABELS.get(key, ()) for key, series in specs.items()}


def missing(text: str, reads: dict[str, tuple[str, ...]]) -> list[str]:
    """What the picker would not find: a series absent, not a gauge, or without a label it reads."""
    families = {f.name: f for f in text_string_to_metric_families(text)}
    problems = []
    for name, labels in reads.items():
        family = families.get(name)
        if family is None or not family.samples:
            problems.append(f"{name}: absent")
        elif family.type != "gauge":
            problems.append(f"{name}: a {family.type}, not a gauge")
        elif not any(all(label in s.labels for label in labels) for s in family.samples):
            problems.append(f"{name}: no sample with labels {labels}")
    return problems
