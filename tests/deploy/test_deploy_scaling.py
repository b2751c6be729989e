"""The overlays past one machine agree with the server and with each other:
the two-node LeaderWorkerSet (one command line for leader and worker, the
parallel sizes fit the GPUs, probes and traffic on the leader only), the
InferencePool routing (the pool selects the serving pods, the picker reads
the gateway's queue), and the TrainJob (a command the recipe accepts, a
shared run directory)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.deploy import container, find, flag_value, render
from tests.support.picker import picker_reads


def _templates(lws: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    group = lws["spec"]["leaderWorkerTemplate"]
    return group["leaderTemplate"], group["workerTemplate"]


def _main(template: dict[str, Any]) -> dict[str, Any]:
    (c,) = [c for c in template["spec"]["containers"] if c["name"] == "lemur"]
    return c


def test_leader_and_worker_run_one_command_line_and_fill_the_gpus() -> None:
    docs = render("gpu-70b-2node")
    lws = find(docs, "LeaderWorkerSet")
    group = lws["spec"]["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    # The leader is ready only once its workers joined: workers must not wait for it.
    assert lws["spec"].get("startupPolicy", "LeaderCreated") == "LeaderCreated"
    leader, worker = (_main(t) for t in _templates(lws))
    assert worker["args"] == [*leader["args"], "--headless"]  # the same flags, so they cannot differ
    args = leader["args"]
    assert args[0] == "serve" and not any(d.get("kind") == "Deployment" for d in docs)
    assert flag_value(args, "--nnodes") == str(group["size"])
    assert flag_value(args, "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    assert flag_value(args, "--node-rank") == "$(LWS_WORKER_INDEX)"  # 0 on the leader, 1 on the worker
    tp, pp = int(flag_value(args, "--tensor-parallel-size")), int(flag_value(args, "--pipeline-parallel-size"))
    for c in (leader, worker):
        gpus = {int(c["resources"][kind]["nvidia.com/gpu"]) for kind in ("requests", "limits")}
        assert gpus == {tp}, "tensor parallel inside a node: one rank per GPU of the pod"
    assert pp == group["size"], "pipeline parallel across the nodes"
    ports = {p["name"]: p["containerPort"] for p in leader["ports"]}
    assert ports["rendezvous"] == int(flag_value(args, "--master-port"))


def test_shared_memory_weights_and_probes_on_the_leader_only() -> None:
    lws = find(render("gpu-70b-2node"), "LeaderWorkerSet")
    leader_t, worker_t = _templates(lws)
    for template in (leader_t, worker_t):
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in _main(template)["volumeMounts"]}
        assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
        assert mounts["/models"]["persistentVolumeClaim"]["claimName"] == "lemur-models"
        env = {e["name"]: e.get("value") for e in _main(template)["env"]}
        assert env["HF_HUB_OFFLINE"] == "1" and env["LEMUR_MODEL_DIR"].startswith("/models/")
    leader, worker = _main(leader_t), _main(worker_t)
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= leader.keys()
    assert not {"startupProbe", "readinessProbe", "livenessProbe", "ports"} & worker.keys()  # no HTTP on a worker
    # The leader downloads; the worker waits for the download's marker, in the same directory.
    (fetch,) = leader_t["spec"]["initContainers"]
    (wait,) = worker_t["spec"]["initContainers"]
    assert fetch["args"] == ["fetch"] and ".lemur-download-complete" in " ".join(wait["args"])
    assert {e["name"]: e["value"] for e in wait["env"]}["LEMUR_MODEL_DIR"] == env["LEMUR_MODEL_DIR"]


def test_traffic_scaling_and_group_networking_reach_the_right_pods() -> None:
    docs = render("gpu-70b-2node")
    lws = find(docs, "LeaderWorkerSet")
    leader_t, worker_t = _templates(lws)
    leader_labels, worker_labels = leader_t["metadata"]["labels"], worker_t["metadata"]["labels"]
    selector = find(docs, "Service", "lemur")["spec"]["selector"]
    assert selector.items() <= leader_labels.items() and not selector.items() <= worker_labels.items()
    target = find(docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (lws["apiVersion"], "LeaderWorkerSet", "lemur-70b")
    policy = find(docs, "NetworkPolicy", "lemur")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= worker_labels.items()
    peers = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "lemur"}}}
    assert any(rule.get("from") == [peers] and "ports" not in rule for rule in policy["ingress"])
    assert any(rule.get("to") == [peers] and "ports" not in rule for rule in policy["egress"])


def test_keda_replaces_the_hpa_on_the_same_leaderworkerset() -> None:
    docs = render("gpu-70b-2node-keda")
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"], "two autoscalers would fight"
    spec = find(docs, "ScaledObject")["spec"]
    lws = find(docs, "LeaderWorkerSet")
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (lws["apiVersion"], lws["kind"], "lemur-70b")
    (trigger,) = spec["triggers"]
    assert "lemur:num_requests_pending" in trigger["metadata"]["query"] and trigger["metricType"] == "AverageValue"


@pytest.mark.slow  # imports vLLM for its parser
def test_lemur_serve_accepts_the_leader_and_worker_command_lines() -> None:
    from lemur.server.main import build_parser, read_flags, wants_headless

    lws = find(render("gpu-70b-2node"), "LeaderWorkerSet")
    leader, worker = (_main(t)["args"][1:] for t in _templates(lws))
    for args, rank in ((leader, 0), (worker, 1)):
        env = {"$(LWS_LEADER_ADDRESS)": "lemur-70b-0.lemur-70b.lemur", "$(LWS_WORKER_INDEX)": str(rank)}
        argv = ["/models/lemur-70b-chat-v1", *(env.get(a, a) for a in args)]  # as the kubelet expands them
        ns, _, _ = read_flags(build_parser(), argv)
        assert (ns.nnodes, ns.node_rank, wants_headless(argv)) == (2, rank, rank > 0)
        assert (ns.tensor_parallel_size, ns.pipeline_parallel_size, ns.master_port) == (8, 2, 29501)


def test_the_pool_routes_to_the_serving_pods_through_the_picker() -> None:
    docs = render("routing")
    pool = find(docs, "InferencePool")["spec"]
    serving = find(docs, "Deployment", "lemur")
    picker = find(docs, "Deployment", "lemur-epp")
    pod_labels = serving["spec"]["template"]["metadata"]["labels"]
    assert pool["selector"]["matchLabels"].items() <= pod_labels.items()
    assert not pool["selector"]["matchLabels"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container(serving)["ports"]}
    assert [p["number"] for p in pool["targetPorts"]] == [ports["http"]]
    ref = pool["endpointPickerRef"]
    service = find(docs, "Service", ref["name"])
    assert ref["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"].items() <= picker["spec"]["template"]["metadata"]["labels"].items()
    epp = container(picker, "epp")
    assert flag_value(epp["args"], "--pool-name") == find(docs, "InferencePool")["metadata"]["name"]
    assert ref["port"]["number"] in {p["containerPort"] for p in epp["ports"]}
    (rule,) = find(docs, "HTTPRoute")["spec"]["rules"]
    assert rule["backendRefs"] == [{"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "lemur"}]
    role = find(docs, "Role", "lemur-epp")
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= granted


def test_the_picker_reads_the_gateways_queue() -> None:
    """What the picker's config reads (its engine config for lemur pods), which
    the e2e test checks against a live /metrics (tests/e2e/test_picker_metrics.py)."""
    reads = picker_reads()
    assert "lemur:num_requests_pending" in reads and "vllm:num_requests_waiting" not in reads
    assert reads["vllm:cache_config_info"] == ("block_size", "num_gpu_blocks")


def test_the_trainjob_runs_the_70b_recipe_on_a_shared_run_directory() -> None:
    from lemur.training.cli import make_parser
    from lemur.training.config import load_config

    docs = render("train-70b")
    job = find(docs, "TrainJob")["spec"]
    assert job["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["trainer"]
    assert trainer["command"][:3] == ["torchrun", "-m", "lemur.training.cli"]
    args = make_parser().parse_args(trainer["command"][3:])
    cfg = load_config(args.preset, args.overrides)  # the recipe accepts every --set
    assert args.command == "recipe" and cfg.name == "70b" and cfg.distributed.strategy == "fsdp"
    assert cfg.model.init_from.startswith("/data/") and all(p.startswith("/data/") for p in cfg.data.code_paths)
    assert int(trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]) == trainer["numProcPerNode"]
    (patch,) = job["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (c,) = pod["containers"]
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    run_claim = next(mounts[m] for m in mounts if str(args.out).startswith(m))["persistentVolumeClaim"]["claimName"]
    claim = find(docs, "PersistentVolumeClaim", run_claim)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every node reads and writes the run directory"
    assert str(args.export_to).startswith(str(args.out))
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
