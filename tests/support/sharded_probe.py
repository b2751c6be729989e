"""Run under torchrun by tests/training/test_sharded.py: build the model at SRC
sharded (training/sharded.py) with its vocabulary grown to VOCAB, and save on
rank 0, for the test only, the gathered weights, the rotary frequencies and
how many elements each rank held.

    torchrun --nproc-per-node 2 tests/support/sharded_probe.py SRC VOCAB OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main(argv: list[str]) -> int:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from lemur.training.config import DistributedConfig
    from lemur.training.distributed import init_distributed, shutdown
    from lemur.training.sharded import build_sharded

    src, vocab, out = Path(argv[0]), int(argv[1]), Path(argv[2])
    cfg = DistributedConfig(strategy="fsdp")
    d = init_distributed(cfg)
    model = build_sharded(src, cfg, d, vocab_size=vocab)
    held = torch.tensor([sum(p.to_local().numel() for p in model.parameters())])
    per_rank = [torch.zeros_like(held) for _ in range(d.world_size)]
    dist.all_gather(per_rank, held)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if d.is_main:
        rope = model.model.rotary_emb.inv_freq.cpu()
        torch.save({"state": full, "held": [int(t) for t in per_rank], "rope": rope}, out)
    shutdown(d)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
