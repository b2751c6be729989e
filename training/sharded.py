"""FSDP at 70B scale: no rank ever holds the whole model.

- The model is built on the meta device (no memory), sharded with
  `fully_shard`, materialized shard by shard (`to_empty`), and each rank
  reads only its own rows of every weight from the Hugging Face safetensors
  files (`torch.distributed.checkpoint`'s HuggingFaceStorageReader).
  Vocabulary rows the checkpoint lacks (Lemur's ChatML tokens on a Llama
  base) get the mean of the old rows, as `resize_embeddings_mean` does on one
  process.
- Checkpoints are saved sharded (`torch.distributed.checkpoint`): every rank
  writes its shards of the model and of the optimizer state into the same
  directory, and a resume reads them back exactly.
- The final model is written as Hugging Face safetensors from the shards
  (each rank writes its pieces, then they are stitched into whole tensors,
  one layer per file), never gathered on one rank.

At micro scale these run on CPU (gloo) and are tested against one process
(tests/training/test_sharded.py)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch

from lemur.training.config import DistributedConfig
from lemur.training.distributed import Dist, barrier, shard

MODEL_FILE_INDEX = "model.safetensors.index.json"


def build_sharded(src: Path, cfg: DistributedConfig, d: Dist, vocab_size: int | None = None) -> torch.nn.Module:
    """The Llama at `src` (a Hugging Face directory), sharded over the ranks,
    each rank reading only its shards; the vocabulary grown to `vocab_size`
    (default: the checkpoint's own)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = AutoConfig.from_pretrained(str(src))
    old_vocab = config.vocab_size
    config.vocab_size = max(vocab_size or old_vocab, old_vocab)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)  # (no storage: parameters are shapes only)
    shard(model, cfg)
    model.to_empty(device=d.device)  # each rank allocates its own shards, uninitialized
    # Non-persistent buffers are in no checkpoint: the rotary frequencies are computed again.
    model.model.rotary_emb = LlamaRotaryEmbedding(config).to(d.device)
    grown = {"model.embed_tokens.weight", "lm_head.weight"} if config.vocab_size > old_vocab else set()
    state = {k: v for k, v in model.state_dict().items() if k not in grown}
    with torch.no_grad():
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(src)))  # in place, into the local shards
        for name in grown:
            _load_grown_rows(src, name, model.get_parameter(name), old_vocab)
    return model


def _local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """A dim-0-sharded DTensor's local rows and their global range [lo, hi):
    FSDP2 shards dim 0 as torch.chunk does."""
    local = param.to_local()
    mesh = param.device_mesh
    rows, world, rank = param.shape[0], mesh.size(), mesh.get_local_rank()
    per = math.ceil(rows / world)
    lo, hi = min(rows, rank * per), min(rows, (rank + 1) * per)
    assert local.shape[0] == hi - lo, (local.shape, lo, hi)
    return local, lo, hi


def _weight_file(src: Path, name: str) -> Path:
    index = src / MODEL_FILE_INDEX
    if index.exists():
        return src / json.loads(index.read_text())["weight_map"][name]
    return src / "model.safetensors"


def _load_grown_rows(src: Path, name: str, param: torch.Tensor, old_vocab: int, chunk: int = 4096) -> None:
    """This rank's rows of an embedding that grew: the checkpoint's rows, then
    the mean of all of them (read in chunks: the whole matrix is never in memory)."""
    from safetensors import safe_open

    local, lo, hi = _local_rows(param)
    with safe_open(str(_weight_file(src, name)), framework="pt") as f:
        rows = f.get_slice(name)
        if lo < old_vocab:
            local[: min(hi, old_vocab) - lo].copy_(rows[lo : min(hi, old_vocab)])
        if hi > old_vocab:
            total = torch.zeros(local.shape[1], dtype=torch.float64)
            for start in range(0, old_vocab, chunk):
                total += rows[start : min(old_vocab, start + chunk)].to(torch.float64).sum(dim=0)
            first_new = max(lo, old_vocab) - lo
            local[first_new:] = (total / old_vocab).to(local.dtype)


# Checkpoints


def save_sharded(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Every rank writes its shards of the trainable weights and optimizer state into `path`."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    model_state, opt_state = get_state_dict(model, opt, options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": model_state, "optimizer": opt_state}, checkpoint_id=str(path))


def load_sharded(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """Each rank reads its own shards back (the same layout they were saved from)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

    options = StateDictOptions(ignore_frozen_params=True)
    model_state, opt_state = get_state_dict(model, opt, options=options)
    state = {"model": model_state, "optimizer": opt_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optimizer"], options=options)


# The final model


def _file_index(names: list[str]) -> dict[str, int]:
    """One safetensors file per decoder layer; embeddings first, the head and norm last."""
    layers = sorted({int(n.split(".")[2]) for n in names if n.startswith("model.layers.")})
    position = {layer: i + 2 for i, layer in enumerate(layers)}
    last = len(layers) + 2
    index = {}
    for n in names:
        if n.startswith("model.layers."):
            index[n] = position[int(n.split(".")[2])]
        else:
            index[n] = 1 if "embed_tokens" in n else last
    return index


def save_hf_sharded(model: torch.nn.Module, tokenizer: Any, path: Path, d: Dist) -> None:
    """The model as a Hugging Face directory written from the shards: each rank
    writes its pieces (path/sharded), which are then stitched into whole tensors
    (one layer per file, with model.safetensors.index.json)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    state = model.state_dict()
    writer = HuggingFaceStorageWriter(
        str(path), fqn_to_index_mapping=_file_index(list(state)), save_distributed=True, enable_consolidation=True
    )
    dcp.save(state, storage_writer=writer)
    if d.is_main:
        shutil.rmtree(path / "sharded", ignore_errors=True)
        model.config.save_pretrained(str(path))
        if model.generation_config is not None:
            model.generation_config.save_pretrained(str(path))
        tokenizer.save_pretrained(str(path))
    barrier(d)
