"""Training the way 70B must run, at micro scale on CPU (training/sharded.py):
two "nodes" on localhost (two torchrun launches of one rank each, placed by
the PET_* variables a TrainJob sets), FSDP, the model built on the meta device with each
rank reading only its shards, sharded checkpoints, and the final model
written from the shards."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lemur.server.live import free_port
from lemur.training.config import load_config
from lemur.training.export import export_checkpoint
from lemur.training.recipe import run_sft
from lemur.training.tokenizer import resize_embeddings_mean
from tests.support.training import (
    MICRO,
    REPO,
    SINGLE,
    assert_same_losses,
    assert_vllm_greedy_equals_transformers,
    start_nodes,
    two_nodes,
    wait_nodes,
)

SFT = ["sft.max_steps=10", "sft.save_every=2", "sft.eval_every=100", "distributed.strategy='fsdp'"]


def _kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its rank, as a lost node
        proc.wait(timeout=30)


@pytest.mark.slow  # two torchrun launches and a probe: in `make test`, not the fast loop
def test_each_rank_reads_only_its_shards_and_new_vocabulary_rows_are_the_mean(micro_run, tmp_path: Path) -> None:
    """A Llama base without Lemur's ChatML tokens: built sharded with the
    vocabulary grown, it equals one process's from_pretrained +
    resize_embeddings_mean, and each rank held about half of it."""
    from transformers import LlamaForCausalLM

    run, _, _ = micro_run
    base = tmp_path / "base"  # the micro model with 4 vocabulary rows fewer
    model = LlamaForCausalLM.from_pretrained(run / "pretrain" / "final", dtype=torch.float32)
    vocab = model.config.vocab_size
    model.resize_token_embeddings(vocab - 4)
    model.save_pretrained(base)
    out = tmp_path / "probe.pt"
    probe = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
             str(REPO / "tests" / "support" / "sharded_probe.py"), str(base), str(vocab), str(out)]  # fmt: skip
    proc = subprocess.run(probe, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(out, weights_only=False)
    expected = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    resize_embeddings_mean(expected, vocab)
    want = expected.state_dict()
    assert got["state"].keys() == {k for k in want if "rotary" not in k}
    for name, tensor in got["state"].items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-6, msg=name)
    torch.testing.assert_close(got["rope"], expected.model.rotary_emb.inv_freq)
    params = list(expected.parameters())
    half = sum(math.ceil(p.shape[0] / 2) * p[0].numel() for p in params)  # dim 0 split in two, as torch.chunk
    assert sum(got["held"]) == sum(p.numel() for p in params) and max(got["held"]) <= half


@pytest.mark.slow  # two two-node launches: in `make test`, not the fast loop
@pytest.mark.engine  # and vLLM
def test_two_nodes_match_one_process_resume_after_a_kill_and_export_from_shards(micro_run, tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    run, _, _ = micro_run
    init = run / "pretrain" / "final"
    one, two = tmp_path / "one", tmp_path / "two"
    run_sft(load_config(MICRO, [*SFT, "sft.micro_batch_size=4"]), one, SINGLE, init=init)
    nodes = two_nodes(["sft", "--from", str(init), "--out", str(two)], [*SFT, "sft.micro_batch_size=2"], free_port())
    checkpoints = two / "sft" / "checkpoints"
    procs = start_nodes(nodes, tmp_path / "logs")
    deadline = time.monotonic() + 240
    while not (checkpoints / "latest").exists() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), (tmp_path / "logs" / "node0.log").read_text()[-3000:]
        time.sleep(0.02)
    _kill(procs)  # both nodes lost after the first checkpoint
    killed_at = (checkpoints / "latest").read_text().strip()
    assert not (two / "sft" / "final").exists(), "the run ended before it could be killed"
    wait_nodes(start_nodes(nodes, tmp_path / "logs"), tmp_path / "logs")  # the same command resumes
    print(f"\n[sharded] killed after {killed_at}, resumed to the end")
    assert_same_losses(one / "sft", two / "sft", steps=10)  # the losses it would have had
    # Every rank wrote its own shards: no state.pt, no gathered copy.
    last = checkpoints / (checkpoints / "latest").read_text().strip()
    assert sorted(p.name for p in last.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    # The final model, written from the shards: one file per layer, the same weights as one process's.
    final = two / "sft" / "final"
    weight_map = json.loads((final / "model.safetensors.index.json").read_text())["weight_map"]
    assert len({f for n, f in weight_map.items() if n.startswith("model.layers.0.")}) == 1
    assert len(set(weight_map.values())) == 2 + len({n.split(".")[2] for n in weight_map if ".layers." in n})
    mine = LlamaForCausalLM.from_pretrained(final, dtype=torch.float32).state_dict()
    theirs = LlamaForCausalLM.from_pretrained(one / "sft" / "final", dtype=torch.float32).state_dict()
    for name in theirs:
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=1e-5, msg=name)
    # Exported (its safetensors copied file by file), it serves: vLLM's greedy tokens are transformers'.
    assert_vllm_greedy_equals_transformers(export_checkpoint(final, tmp_path / "export"))
