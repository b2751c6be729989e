"""The training module on a micro config: pipeline, masking, resume, data
parallel, resizing, and the exported checkpoint in transformers (in vLLM and
the sharded FSDP path at scale: test_sharded.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lemur.chat_format import IM_END, LEMUR_ADDED_TOKENS
from lemur.training.config import load_config
from lemur.training.recipe import run_pretrain
from lemur.training.sft_data import IGNORE, tokenize_conversation
from tests.support.training import MICRO, SINGLE, assert_same_losses, copy_prepared, metric_rows, run_two_ranks


def test_pipeline_writes_everything(micro_run) -> None:
    run, _, summary = micro_run
    meta = json.loads((run / "data" / "pretrain" / "meta.json").read_text())
    assert meta["splits"]["train"]["sequences"] > 0 and meta["splits"]["heldout"]["sequences"] > 0
    assert 9.0 <= meta["mix"]["code_text_ratio"] <= 11.5  # code:text 10:1
    for phase in ("pretrain", "sft"):
        out = run / phase
        assert (out / "loss_curve.png").stat().st_size > 1000
        losses = metric_rows(out / "metrics.jsonl", "loss")
        assert sorted(losses) == list(range(1, max(losses) + 1))
        assert (out / "checkpoints" / "latest").exists()
        assert (out / "final" / "config.json").exists()
    assert summary["pretrain"]["final_eval_loss"] < summary["pretrain"]["initial_eval_loss"]
    assert summary["sft"]["final_eval_loss"] < summary["sft"]["initial_eval_loss"]


def test_export_is_a_lemur_chat_checkpoint(micro_run) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    _, export, _ = micro_run
    assert list(export.glob("model*.safetensors"))
    tok = AutoTokenizer.from_pretrained(export)
    model = LlamaForCausalLM.from_pretrained(export)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert tok.convert_tokens_to_ids(list(LEMUR_ADDED_TOKENS)) == list(range(len(tok) - 5, len(tok)))
    gen = json.loads((export / "generation_config.json").read_text())
    assert tok.convert_tokens_to_ids(IM_END) in gen["eos_token_id"] and tok.eos_token_id in gen["eos_token_id"]
    rendered = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert rendered == "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_sft_masking_is_assistant_only(micro_run) -> None:
    from transformers import AutoTokenizer

    _, export, _ = micro_run
    tok = AutoTokenizer.from_pretrained(export)
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which module defines `Path`?"},
        {"role": "assistant", "content": "`Path` is defined in `pathlib`."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ]
    ex = tokenize_conversation(conv, tok, max_len=1000)
    assert len(ex.input_ids) == len(ex.labels)
    # The whole sequence is exactly the ChatML rendering.
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(conv, tokenize=False)
    # Trained spans, in order: each assistant content followed by <|im_end|>\n.
    spans, cur = [], []
    for tid, label in zip(ex.input_ids, ex.labels, strict=True):
        if label == IGNORE:
            if cur:
                spans.append(cur)
                cur = []
        else:
            assert label == tid
            cur.append(tid)
    if cur:
        spans.append(cur)
    assert [tok.decode(s) for s in spans] == [
        "`Path` is defined in `pathlib`.<|im_end|>\n",
        "You are welcome.<|im_end|>\n",
    ]
    # The assistant header right before each span is masked.
    header = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    text_ids = ex.input_ids
    for start in (i for i in range(len(text_ids)) if text_ids[i : i + len(header)] == header):
        assert all(label == IGNORE for label in ex.labels[start : start + len(header)])
    with pytest.raises(ValueError, match="unknown role"):
        tokenize_conversation([{"role": "robot", "content": "x"}], tok, 100)


def test_resume_reaches_the_same_loss(micro_run, tmp_path: Path) -> None:
    run, _, _ = micro_run
    cfg = load_config(MICRO, ["pretrain.save_every=100"])
    whole, split = tmp_path / "whole", tmp_path / "split"
    copy_prepared(run, whole)
    copy_prepared(run, split)
    run_pretrain(cfg, whole, SINGLE)
    stopped = run_pretrain(cfg, split, SINGLE, stop_after=3)
    assert stopped["steps"] == 3 and not (split / "pretrain" / "final").exists()
    run_pretrain(cfg, split, SINGLE)  # resumes from the step-3 checkpoint
    a = metric_rows(whole / "pretrain" / "metrics.jsonl", "loss")
    b = metric_rows(split / "pretrain" / "metrics.jsonl", "loss")
    assert sorted(b) == sorted(a) == list(range(1, 9))
    for step in range(1, 9):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


@pytest.mark.slow  # several processes: in `make test`, not the fast loop
@pytest.mark.parametrize(("strategy", "accum"), [("ddp", 1), ("fsdp", 1), ("ddp", 2)])
def test_two_process_data_parallel_matches_one_process(micro_run, tmp_path: Path, strategy: str, accum: int) -> None:
    """Two ranks of micro-batch 2 // accum, accumulating `accum` micro-batches
    (DDP skips the gradient all-reduce but for the last), equal one process
    with micro-batch 4."""
    run, _, _ = micro_run
    common = ["pretrain.max_steps=4", "pretrain.save_every=100", "pretrain.eval_every=100",
              f"distributed.strategy={strategy!r}"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    copy_prepared(run, one)
    copy_prepared(run, two)
    run_pretrain(load_config(MICRO, [*common, "pretrain.micro_batch_size=4"]), one, SINGLE)
    batching = [f"pretrain.micro_batch_size={2 // accum}", f"pretrain.grad_accum={accum}"]
    run_two_ranks(["pretrain", "--out", str(two)], [*common, *batching])
    assert_same_losses(one / "pretrain", two / "pretrain", steps=4)


def test_data_build_is_deterministic(micro_run, tmp_path: Path) -> None:
    import numpy as np
    from transformers import AutoTokenizer

    from lemur.training.corpus import iter_documents
    from lemur.training.data import build_pretrain_data

    run, _, _ = micro_run
    cfg = load_config(MICRO).data
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    docs = list(iter_documents(cfg))
    build_pretrain_data(docs, tok, cfg, tmp_path / "a")
    build_pretrain_data(docs, tok, cfg, tmp_path / "b")
    for f in sorted(p.name for p in (tmp_path / "a").glob("*.npy")):
        assert np.array_equal(np.load(tmp_path / "a" / f), np.load(tmp_path / "b" / f)), f
    assert np.array_equal(
        np.load(tmp_path / "a" / "train-00000.npy"), np.load(run / "data" / "pretrain" / "train-00000.npy")
    )
    other = tmp_path / "c"
    build_pretrain_data(docs, tok, load_config(MICRO, ["data.seed=1"]).data, other)
    assert not np.array_equal(np.load(tmp_path / "a" / "train-00000.npy"), np.load(other / "train-00000.npy"))


def test_gradient_checkpointing_gives_the_same_losses(micro_run, tmp_path: Path) -> None:
    run, _, _ = micro_run
    common = ["pretrain.max_steps=2", "pretrain.save_every=100", "pretrain.eval_every=100"]
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    copy_prepared(run, plain)
    copy_prepared(run, ckpt)
    run_pretrain(load_config(MICRO, common), plain, SINGLE)
    run_pretrain(load_config(MICRO, [*common, "pretrain.gradient_checkpointing=true"]), ckpt, SINGLE)
    a = metric_rows(plain / "pretrain" / "metrics.jsonl", "loss")
    b = metric_rows(ckpt / "pretrain" / "metrics.jsonl", "loss")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-5


LORA = [
    "lora.enabled=true",
    "lora.rank=4",
    "lora.alpha=8.0",
    "data.sft_task='house-style'",
    "sft.lr=1e-2",
    "sft.max_steps=40",
    "sft.eval_every=20",
    "sft.save_every=20",
    "sft.warmup_steps=4",
]


def _lora_state(path: Path) -> dict[str, torch.Tensor]:
    from lemur.training.checkpoint import latest_checkpoint, load_checkpoint

    found = latest_checkpoint(path / "sft" / "checkpoints")
    assert found is not None
    return load_checkpoint(found)["model"]


@pytest.fixture(scope="module")
def lora_run(micro_run, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    from lemur.training.recipe import run_sft

    _, export, _ = micro_run
    run = tmp_path_factory.mktemp("lora") / "run"
    summary = run_sft(load_config(MICRO, LORA), run, SINGLE, init=export)
    return run, export, summary


def test_lora_sft_learns_the_house_style_and_checkpoints_only_the_adapter(lora_run) -> None:
    run, export, summary = lora_run
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.1, summary
    assert summary["lora"]["base"] == str(export.resolve())
    final = run / "sft" / "final"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in final.iterdir()}
    config = json.loads((final / "adapter_config.json").read_text())
    assert (
        config["r"] == 4 and config["lora_alpha"] == 8.0 and config["base_model_name_or_path"] == str(export.resolve())
    )
    state = _lora_state(run)
    assert state and all(".lora_A." in k or ".lora_B." in k for k in state), list(state)[:5]


def test_exported_adapter_reloads_in_peft_bit_exactly(lora_run) -> None:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    run, export, _ = lora_run
    trained = _lora_state(run)  # the last checkpoint is the final step
    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(export), run / "sft" / "final")
    loaded = model.state_dict()
    for name, tensor in trained.items():
        assert torch.equal(loaded[name], tensor), name
    assert any(t.abs().sum() > 0 for k, t in trained.items() if ".lora_B." in k)  # B moved off its zero init


def test_merged_adapter_equals_the_peft_model(lora_run, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from lemur.training.cli import main as train_main

    run, export, _ = lora_run
    adapter = run / "sft" / "final"
    assert train_main(["export", "--from", str(adapter), "--merge", "--to", str(tmp_path / "merged")]) == 0
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "merged").eval()
    peft_model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(export), adapter).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        a, b, base = merged(ids).logits, peft_model(ids).logits, peft_model.get_base_model()
        with peft_model.disable_adapter():
            plain = base(ids).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
    assert (a - plain).abs().max() > 1e-2  # the adapter is in the merged weights
    gen = json.loads((tmp_path / "merged" / "generation_config.json").read_text())
    assert len(gen["eos_token_id"]) == 2  # exported like any Lemur-chat checkpoint


@pytest.mark.slow  # two runs and a resume, ~20 s: in `make test`, not the fast loop
def test_lora_resume_is_exact(micro_run, tmp_path: Path) -> None:
    from lemur.training.recipe import run_sft

    _, export, _ = micro_run
    cfg = load_config(MICRO, LORA)
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_sft(cfg, whole, SINGLE, init=export)
    stopped = run_sft(cfg, split, SINGLE, init=export, stop_after=13)
    assert stopped["steps"] == 13 and not (split / "sft" / "final").exists()
    run_sft(cfg, split, SINGLE, init=export)
    a = metric_rows(whole / "sft" / "metrics.jsonl", "loss")
    b = metric_rows(split / "sft" / "metrics.jsonl", "loss")
    assert sorted(a) == sorted(b) == list(range(1, 41))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


@pytest.mark.slow  # several processes: in `make test`, not the fast loop
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_process_lora_sft_matches_one_process(micro_run, tmp_path: Path, strategy: str) -> None:
    """LoRA on a frozen base under torchrun: two ranks of micro-batch 2 equal
    one process of 4 (no dropout, so that both draw no random numbers)."""
    from lemur.training.recipe import run_sft

    _, export, _ = micro_run
    common = [*LORA, "lora.dropout=0.0", "sft.max_steps=4", "sft.save_every=100", "sft.eval_every=100",
              f"distributed.strategy={strategy!r}"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    run_sft(load_config(MICRO, [*common, "sft.micro_batch_size=4"]), one, SINGLE, init=export)
    run_two_ranks(["sft", "--lora", "--from", str(export), "--out", str(two)], [*common, "sft.micro_batch_size=2"])
    assert_same_losses(one / "sft", two / "sft", steps=4)
    assert (two / "sft" / "final" / "adapter_model.safetensors").exists()
