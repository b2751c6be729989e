"""What the Gateway API Inference Extension's endpoint picker (EPP, v1.6)
reads from a model server's /metrics with its default flags
(`--total-queued-requests-metric` and the rest), and the queue depth the
routing overlay points it at instead: series names, types and labels."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

# series -> the labels the picker reads from it
PICKER_READS: dict[str, tuple[str, ...]] = {
    "vllm:num_requests_waiting": (),  # --total-queued-requests-metric (default)
    "vllm:num_requests_running": (),  # --total-running-requests-metric
    "vllm:kv_cache_usage_perc": (),  # --kv-cache-usage-percentage-metric (0 to 1)
    "vllm:cache_config_info": ("block_size", "num_gpu_blocks"),  # --cache-info-metric
    "lemur:num_requests_pending": (),  # what the routing overlay sets as the queued-requests metric
}
LORA_INFO = ("vllm:lora_requests_info", ("running_lora_adapters", "waiting_lora_adapters", "max_lora"))


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
