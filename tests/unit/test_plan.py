"""`lemur plan`: the sizing arithmetic of ../shared/lemur-reference.md and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lemur.hardware.gpus import GPUS, find_gpu
from lemur.plan import GB, LEMUR_70B_CHAT, load_shape, main, plan, shape_from_hf_config

REPO = Path(__file__).resolve().parents[2]
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


# lemur-70b-chat, by hand (the tests below pin these, not the implementation's formula):
#   linear layers 80 x (8192 x 128 x (2 x 64 + 2 x 8) + 3 x 8192 x 28672) = 80 x 855,638,016 = 68,451,041,280
#   embed_tokens + lm_head 2 x 32005 x 8192 = 524,369,920; norms (2 x 80 + 1) x 8192 = 1,318,912
#   H100 budget per GPU 81559 MiB x 0.9 = 85,520,809,984 x 0.9 = 76,968,728,985.6 B, less 3 GiB = 3,221,225,472 B
#   one 16-token KV block per GPU at TP 4 (2 KV heads): 16 x 2 x 80 x 2 x 128 x 2 B = 1,310,720 B


def test_kv_capacity_by_hand() -> None:
    # bf16 weights per GPU at TP 4: (68,451,041,280 + 524,369,920) / 4 x 2 + 1,318,912 x 2 = 34,490,343,424 B.
    # KV cache 76,968,728,985.6 - 34,490,343,424 - 3,221,225,472 = 39,257,160,089.6 B
    #   = 29,950.8 blocks -> 29,950 x 16 = 479,200 tokens = 116.99 sequences of 4096.
    p = plan("lemur-70b-chat", "h100", 4, gpu_memory_utilization=0.9, overhead_gib=3)
    assert p.weights_per_gpu_gb * GB == pytest.approx(34_490_343_424, abs=1)
    assert p.kv_cache_per_gpu_gb * GB == pytest.approx(39_257_160_089.6, abs=1)
    assert p.kv_cache_tokens == 479_200
    assert p.full_length_sequences == 116
    assert p.max_concurrency == pytest.approx(479_200 / 4096)
    # fp8 KV halves the block (655,360 B): 59,901.7 blocks -> 958,416 tokens.
    assert plan("lemur-70b-chat", "h100", 4, kv_cache_dtype="fp8").kv_cache_tokens == 958_416
    # 2048-token sequences: 479,200 / 2048 = 233.98.
    assert plan("lemur-70b-chat", "h100", 4, max_model_len=2048).full_length_sequences == 233


def test_fp8_weights_keep_embeddings_and_lm_head_in_bf16() -> None:
    # Linear layers 68,451,041,280 / 4 x 1 B = 17,112,760,320; embed_tokens and lm_head
    # 524,369,920 / 4 x 2 B = 262,184,960; norms 1,318,912 x 2 B = 2,637,824: 17,377,583,104 B per GPU.
    # KV cache 76,968,728,985.6 - 17,377,583,104 - 3,221,225,472 = 56,369,920,409.6 B
    #   = 43,006.8 blocks -> 688,096 tokens = 167.99 sequences.
    # (With every weight at 1 byte it would be 17,245,171,712 B, 689,712 tokens and 168 sequences.)
    p = plan("lemur-70b-chat", "h100", 4, quantization="fp8")
    assert p.weights_per_gpu_gb * GB == pytest.approx(17_377_583_104, abs=1)
    assert p.weights_total_gb * GB == pytest.approx(68_451_041_280 + (524_369_920 + 1_318_912) * 2, abs=1)
    assert p.kv_cache_tokens == 688_096
    assert p.full_length_sequences == 167
    assert p.weight_bytes_per_param == 1 and p.unquantized_bytes_per_param == 2
    assert p.quantized_params == 68_451_041_280


def test_int4_adds_group_scales_and_zero_points() -> None:
    # AWQ at TP 2: 4-bit weights plus a 2-byte scale and a 4-bit zero point per 128 weights,
    # 0.5 + 2.5 / 128 = 133 / 256 bytes: 68,451,041,280 / 2 x 133 / 256 = 17,781,227,520 B;
    # embeddings 524,369,920 / 2 x 2 B = 524,369,920; norms 2,637,824: 18,308,235,264 B per GPU.
    # KV blocks at TP 2 (4 KV heads): 2,621,440 B; (76,968,728,985.6 - 18,308,235,264 - 3,221,225,472)
    #   / 2,621,440 = 21,148.4 blocks -> 338,368 tokens = 82.6 sequences.
    p = plan("lemur-70b-chat", "h100", 2, quantization="awq")
    assert p.weight_bytes_per_param == pytest.approx(0.51953125)
    assert p.weights_per_gpu_gb * GB == pytest.approx(18_308_235_264, abs=1)
    assert p.kv_cache_tokens == 338_368
    assert p.full_length_sequences == 82
    assert plan("lemur-70b-chat", "h100", 2, quantization="gptq").weights_per_gpu_gb == p.weights_per_gpu_gb


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
    with pytest.raises(ValueError, match="attention heads are not divisible"):
        plan("lemur-70b-chat", "h100", 3)
    # TP 16 > 8 KV heads: heads are replicated, so KV per GPU stops shrinking at 1 head.
    p = plan("lemur-70b-chat", "h100", 16)
    assert p.kv_bytes_per_token_per_gpu == 2 * 80 * 1 * 128 * 2
    with pytest.raises(ValueError, match="KV heads cannot be split"):
        plan(dataclasses.replace(LEMUR_70B_CHAT, num_kv_heads=6), "h100", 4)
    # 64 heads split over 8 GPUs, but an intermediate size of 28676 does not.
    with pytest.raises(ValueError, match="intermediate size 28676 is not divisible"):
        plan(dataclasses.replace(LEMUR_70B_CHAT, intermediate_size=28676), "h100", 8)
    # int4 groups of 128 must not straddle ranks: Llama-2-7B's MLP (11008) at TP 4 is 2752 per GPU.
    llama_2_7b = dataclasses.replace(LEMUR_70B_CHAT, num_layers=32, hidden_size=4096, intermediate_size=11008,
                                     num_heads=32, num_kv_heads=32, vocab_size=32000)  # fmt: skip
    with pytest.raises(ValueError, match="down_proj has 2752 inputs per GPU"):
        plan(llama_2_7b, "h100", 4, quantization="awq")
    assert plan(llama_2_7b, "h100", 4).fits and plan(llama_2_7b, "h100", 2, quantization="awq").fits


def test_max_model_len_above_the_context_is_refused(tiny_config: Path) -> None:
    with pytest.raises(ValueError, match="--max-model-len 4097 is above lemur-70b-chat's context of 4096"):
        plan("lemur-70b-chat", "h100", 4, max_model_len=4097)
    assert plan("lemur-70b-chat", "h100", 4, max_model_len=4096).max_model_len == 4096
    assert plan(str(tiny_config), "l4", 1, max_model_len=512).max_model_len == 512
    with pytest.raises(ValueError, match="context of 512"):
        plan(str(tiny_config), "l4", 1, max_model_len=513)
    # vLLM 0.32 multiplies the context by linear and dynamic rope scaling factors, not YaRN's or Llama 3's.
    config = json.loads(tiny_config.read_text())
    scaled = {**config, "rope_scaling": {"rope_type": "linear", "factor": 4.0}}
    assert plan(shape_from_hf_config(scaled, "x"), "l4", 1).max_model_len == 2048
    yarn = {**config, "rope_scaling": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}}
    assert shape_from_hf_config(yarn, "x").max_position_embeddings == 512


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
    return subprocess.run([sys.executable, "-m", "lemur", "plan", *args], cwd=REPO, capture_output=True, text=True)


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


def test_cli_refuses_a_max_model_len_vllm_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--max-model-len", "8192"])
    assert exit_info.value.code == 2
    assert "above lemur-70b-chat's context of 4096 tokens" in capsys.readouterr().err
