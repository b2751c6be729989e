"""What the training tests share: the micro preset, one process, the loss
rows of a run, and runs under torchrun on CPU (gloo)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lemur.training.distributed import Dist

REPO = Path(__file__).resolve().parents[2]
MICRO = str(REPO / "tests" / "training" / "micro.toml")
SINGLE = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def metric_rows(path: Path, key: str) -> dict[int, float]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in rows if key in r}


def copy_prepared(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    shutil.copytree(src / "tokenizer", dst / "tokenizer")
    shutil.copytree(src / "data" / "pretrain", dst / "data" / "pretrain")


def run_two_ranks(command: list[str], overrides: list[str]) -> None:
    """`lemur train COMMAND` on the micro preset under torchrun, 2 CPU ranks (gloo)."""
    sets = [x for c in overrides for x in ("--set", c)]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd = [*launcher, "-m", "lemur.training.cli", *command, "--preset", MICRO, *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def assert_same_losses(one: Path, two: Path, steps: int, tolerance: float = 1e-4) -> None:
    a = metric_rows(one / "metrics.jsonl", "loss")
    b = metric_rows(two / "metrics.jsonl", "loss")
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    for step in a:
        assert abs(a[step] - b[step]) <= tolerance, (step, a[step], b[step])


Node = tuple[list[str], dict[str, str]]  # a node's command line and environment


def two_nodes(command: list[str], overrides: list[str], port: int) -> list[Node]:
    """`lemur train COMMAND` as two "nodes" of one rank each, started as a
    TrainJob's torch-distributed runtime starts them: the same torchrun command
    on every node, told its place by the PET_* variables (static rendezvous on
    node 0's address)."""
    sets = [x for c in overrides for x in ("--set", c)]
    cli = ["-m", "lemur.training.cli", *command, "--preset", MICRO, *sets]
    cmd = [sys.executable, "-m", "torch.distributed.run", *cli]
    place = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    return [(cmd, {**place, "PET_NODE_RANK": str(rank)}) for rank in (0, 1)]


def start_nodes(nodes: list[Node], logs: Path) -> list[subprocess.Popen]:
    """Each node in its own process group (so that a test can kill a node whole)."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, (cmd, place) in enumerate(nodes):
        env = {**os.environ, "OMP_NUM_THREADS": "1", **place}
        with (logs / f"node{i}.log").open("ab") as log:
            out = {"stdout": log, "stderr": subprocess.STDOUT}
            procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True, **out))
    return procs


def wait_nodes(procs: list[subprocess.Popen], logs: Path, timeout: float = 300) -> None:
    for i, proc in enumerate(procs):
        code = proc.wait(timeout=timeout)
        assert code == 0, (logs / f"node{i}.log").read_text()[-4000:]


VLLM_GREEDY = """
import json, sys
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
prompts = json.loads(sys.argv[2])
llm = LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, max_model_len=128, seed=0)
outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts],
                    SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
print("RESULT" + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
"""


def assert_vllm_greedy_equals_transformers(export: Path) -> None:
    """vLLM serves `export` with transformers' greedy tokens (code, text and a chat turn)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(export)
    model = LlamaForCausalLM.from_pretrained(export, dtype=torch.float32).eval()
    texts = ["def main():\n    ", "import os\n", "<|im_start|>user\nWhich module defines `Path`?<|im_end|>\n"]
    prompts = [tok.encode(t) for t in texts]
    expected = []
    for ids in prompts:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
        expected.append(out[0, len(ids) :].tolist())
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([sys.executable, "-c", VLLM_GREEDY, str(export), json.dumps(prompts)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    assert json.loads(line[len("RESULT") :]) == expected
