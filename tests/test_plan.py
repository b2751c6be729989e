"""`lemur plan`: the sizing arithmetic of ../shared/lemur-reference.md and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from server.gpus import GPUS, find_gpu
from server.plan import GB, LEMUR_70B_CHAT, load_shape, plan

REPO = Path(__file__).resolve().parent.parent
KIB = 1024


def test_lemur_70b_chat_on_4x_h100_matches_the_reference_arithmetic() -> None:
    p = plan("lemur-70b-chat", "H100 80GB SXM", tensor_parallel_size=4)
    # 2 x 80 layers x 8 KV heads x 128 x 2 bytes = 320 KiB per token, ~1.34 GB per 4096-token sequence.
    assert p.kv_bytes_per_token == 320 * KIB
    assert p.kv_bytes_per_token_per_gpu == 80 * KIB
    assert p.kv_gb_per_full_sequence == pytest.approx(1.34, abs=0.01)
    # bf16 weights ~138 GB, ~35 GB per GPU at TP 4.
    assert p.weights_total_gb == pytest.approx(138, abs=0.5)
    assert p.weights_per_gpu_gb == pytest.approx(34.5, abs=0.1)
    # Decode lower bound ~35 GB / 3.35 TB/s = ~10.4 ms (10.3 from the unrounded 34.5 GB).
    assert 10.2 < p.decode_ms_per_token < 10.5
    assert p.decode_ms_per_token_full_context > p.decode_ms_per_token
    assert p.max_model_len == 4096 and p.dtype == "bfloat16" and p.kv_cache_dtype == "bfloat16"
    assert p.fits and p.smallest_tp_that_fits == 2


def test_kv_capacity_follows_the_memory_budget() -> None:
    p = plan("lemur-70b-chat", "h100", 4, gpu_memory_utilization=0.9, overhead_gib=3)
    budget = 81559 * 1024**2 * 0.9 - p.weights_per_gpu_gb * GB - 3 * 1024**3
    assert p.kv_cache_tokens == int(budget // (80 * KIB * 16)) * 16  # whole 16-token blocks
    assert p.full_length_sequences == p.kv_cache_tokens // 4096 == 116
    assert p.max_concurrency == pytest.approx(p.kv_cache_tokens / 4096)
    # More memory for the cache: fp8 KV doubles the tokens; a shorter context fits more sequences.
    fp8 = plan("lemur-70b-chat", "h100", 4, kv_cache_dtype="fp8")
    assert fp8.kv_bytes_per_token == 160 * KIB
    assert fp8.kv_cache_tokens == pytest.approx(2 * p.kv_cache_tokens, rel=0.001)
    assert plan("lemur-70b-chat", "h100", 4, max_model_len=2048).full_length_sequences == 2 * 116 + 1


def test_what_does_not_fit() -> None:
    one = plan("lemur-70b-chat", "h100", 1)
    assert not one.fits and one.kv_cache_tokens == 0 and one.smallest_tp_that_fits == 2
    # 40 GB cards: bf16 70B needs 4 of them to leave room for a 4096-token sequence.
    assert plan("lemur-70b-chat", "a100-40gb", 2).smallest_tp_that_fits == 4
    # fp8 weights fit one H100 (with a small cache).
    assert plan("lemur-70b-chat", "h100", 1, quantization="fp8").fits
    # Nothing up to TP 8 fits on L4s at fp32.
    assert plan("lemur-70b-chat", "l4", 8, dtype="float32").smallest_tp_that_fits is None


def test_tensor_parallel_rules() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        plan("lemur-70b-chat", "h100", 3)
    # TP 16 > 8 KV heads: heads are replicated, so KV per GPU stops shrinking at 1 head.
    p = plan("lemur-70b-chat", "h100", 16)
    assert p.kv_bytes_per_token_per_gpu == 2 * 80 * 1 * 128 * 2


def test_gpu_lookup_and_bandwidth_scale_the_bound() -> None:
    assert find_gpu("NVIDIA H100 80GB SXM") is find_gpu("h100") is GPUS["h100-sxm"]
    assert find_gpu("A100 80GB").name == "NVIDIA A100 80GB SXM"
    with pytest.raises(ValueError, match="unknown GPU"):
        find_gpu("voodoo2")
    h100 = plan("lemur-70b-chat", "h100", 4).decode_ms_per_token
    h200 = plan("lemur-70b-chat", "h200", 4).decode_ms_per_token
    assert h200 == pytest.approx(h100 * 3.35 / 4.8)


def test_shapes_from_presets_and_config_json(tiny_config: Path) -> None:
    # The 70b training preset continues from Llama-2-70B: the same shape as lemur-70b-chat.
    assert load_shape("70b").num_params() == LEMUR_70B_CHAT.num_params()
    tiny = load_shape("lemur-tiny-chat")
    assert (tiny.num_layers, tiny.hidden_size, tiny.head_dim, tiny.vocab_size) == (4, 256, 32, 1029)
    from_json = load_shape(str(tiny_config))
    assert from_json.num_params() == tiny.num_params()
    assert plan(str(tiny_config), "l4", 1).max_model_len == 512
    with pytest.raises(FileNotFoundError):
        load_shape("no-such-preset")


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """The config.json that `lemur train recipe --preset tiny` exports (LlamaForCausalLM)."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 256,
        "intermediate_size": 688,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 32,
        "vocab_size": 1029,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }
    path = tmp_path / "lemur-tiny-chat" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server", "plan", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_text_and_json() -> None:
    out = run_cli("lemur-70b-chat", "--gpu", "h100", "--tensor-parallel-size", "4")
    assert out.returncode == 0, out.stderr
    assert "320.0 KiB" in out.stdout and "34.49 GB per GPU" in out.stdout and "10.30 ms/token" in out.stdout
    js = run_cli("--json", "--gpu", "h200", "-tp", "2", "--kv-cache-dtype", "fp8", "--max-model-len", "2048")
    data = json.loads(js.stdout)
    assert data["gpu"] == "NVIDIA H200 141GB" and data["tensor_parallel_size"] == 2
    assert data["kv_bytes_per_token"] == 160 * KIB and data["max_model_len"] == 2048
    # Exit 1 when not even one sequence fits, 2 on bad input.
    assert run_cli("--gpu", "l4", "-tp", "1").returncode == 1
    bad = run_cli("--gpu", "voodoo2")
    assert bad.returncode == 2 and "unknown GPU" in bad.stderr
