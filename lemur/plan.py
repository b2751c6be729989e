"""`lemur plan`: memory and speed arithmetic for serving a dense Llama-shaped
model with vLLM, before renting the GPUs.

Everything here is arithmetic on the model's shape and the GPU's datasheet:
weights per GPU, KV-cache bytes per token, how many tokens (and full-length
sequences) the KV cache holds, and a roofline lower bound for one decode step
(every weight byte and every KV byte of the batch read once from HBM). Real
engines land above the bound; docs/sizing.md compares it with
published 70B measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from lemur.hardware.gpus import GPUS, GpuSpec, find_gpu

GB = 1e9
GIB = 1024**3

DTYPE_BYTES = {"float32": 4.0, "float16": 2.0, "bfloat16": 2.0}
DTYPE_ALIASES = {"float": "float32", "half": "float16", "fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
KV_DTYPE_BYTES = {"fp8": 1.0, "fp8_e4m3": 1.0, "fp8_e5m2": 1.0, "float16": 2.0, "bfloat16": 2.0, "float32": 4.0}
# vLLM's --quantization applies to the linear layers only (attention and MLP projections):
# embed_tokens, lm_head (unless an int4 checkpoint quantized it, which is rare) and the
# norms stay in --dtype. int4 checkpoints (AWQ, GPTQ; group size 128) store, for each
# group of 128 input weights of an output channel, a 16-bit scale and a 4-bit zero point
# packed eight to an int32: 0.5 + (2 + 0.5) / 128 bytes per weight, 3.9% above 0.5.
# Per-tensor or per-channel scales of fp8 and int8 are under 0.1% and left out, as are
# GPTQ's g_idx (4 bytes per input row) and vLLM's padding of the vocabulary to a multiple of 64.
INT4_GROUP_SIZE = 128
INT4_BYTES = 0.5 + (2 + 0.5) / INT4_GROUP_SIZE
INT4_METHODS = ("awq", "gptq", "int4")
# Bytes per weight of the quantized linear layers.
QUANT_BYTES = {"fp8": 1.0, "int8": 1.0, "awq": INT4_BYTES, "gptq": INT4_BYTES, "int4": INT4_BYTES}
# Rope scalings whose factor vLLM 0.32 does not apply to max_position_embeddings.
_ROPE_TYPES_UNSCALED = ("default", "su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling")
TP_CANDIDATES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a dense Llama-family decoder that memory depends on.
    max_position_embeddings is the longest context vLLM accepts for the model."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    dtype: str = "bfloat16"

    def layer_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        return attn + mlp

    def linear_params(self) -> int:
        """The attention and MLP projections: what --quantization quantizes."""
        return self.num_layers * self.layer_params()

    def embedding_params(self) -> int:
        """embed_tokens and lm_head (one matrix when tied); sharded, never quantized."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    def sharded_params(self) -> int:
        """Parameters split across tensor-parallel ranks (all but the norms)."""
        return self.linear_params() + self.embedding_params()

    def replicated_params(self) -> int:
        """RMSNorm weights: two per layer plus the final one, on every rank."""
        return (2 * self.num_layers + 1) * self.hidden_size

    def num_params(self) -> int:
        return self.sharded_params() + self.replicated_params()


# The published lemur-70b-chat-v1 config (Llama-2-70B shape, 32000 + 5 added tokens).
LEMUR_70B_CHAT = ModelShape("lemur-70b-chat", 80, 8192, 28672, 64, 8, 128, 32005, 4096)
# Reference shapes for comparing with published measurements of other 70B models.
REFERENCE_SHAPES = {
    "lemur-70b-chat": LEMUR_70B_CHAT,
    "llama-2-70b": dataclasses.replace(LEMUR_70B_CHAT, name="llama-2-70b", vocab_size=32000),
    "llama-3-70b": dataclasses.replace(
        LEMUR_70B_CHAT, name="llama-3-70b", vocab_size=128256, max_position_embeddings=8192
    ),
}
# Model names that map onto a training preset (training/presets/*.toml).
PRESET_ALIASES = {"lemur-tiny-chat": "tiny"}


def _context_length(config: dict) -> int:
    """The longest --max-model-len vLLM 0.32 accepts: max_position_embeddings, times the
    rope scaling factor for linear and dynamic scaling (YaRN and Llama-3 scaling leave
    it as it is)."""
    length = int(config.get("max_position_embeddings", 4096))
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if isinstance(rope, dict):
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if rope_type not in _ROPE_TYPES_UNSCALED and rope.get("factor"):
            length = int(length * float(rope["factor"]))
    return length


def shape_from_hf_config(config: dict, name: str) -> ModelShape:
    """A ModelShape from a Hugging Face config.json (dense Llama-like models)."""
    if any(k in config for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise ValueError(f"{name}: mixture-of-experts models are not supported by lemur plan")
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return ModelShape(
        name=name,
        num_layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(config["intermediate_size"]),
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        vocab_size=int(config["vocab_size"]),
        max_position_embeddings=_context_length(config),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        dtype=dtype,
    )


def shape_from_preset(preset: str, name: str) -> ModelShape:
    """A training preset's model: a BPE of vocab_size plus Lemur's added tokens
    from scratch, or the Llama-2 tokenizer (32000) plus them when continuing."""
    from lemur.chat_format import LEMUR_ADDED_TOKENS
    from lemur.training.config import load_config

    m = load_config(preset).model
    base_vocab = 32000 if m.init_from else m.vocab_size
    return ModelShape(
        name=name,
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        head_dim=m.hidden_size // m.num_heads,
        vocab_size=base_vocab + len(LEMUR_ADDED_TOKENS),
        max_position_embeddings=m.max_position_embeddings,
    )


def load_shape(model: str) -> ModelShape:
    """A reference name (lemur-70b-chat, llama-3-70b, ...), lemur-tiny-chat or a
    training preset (tiny, 1b, 7b, 70b), a config.json, or a checkpoint directory."""
    if model in REFERENCE_SHAPES:
        return REFERENCE_SHAPES[model]
    path = Path(model)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json":
        if not path.is_file():
            raise FileNotFoundError(f"no config file {path}")
        return shape_from_hf_config(json.loads(path.read_text()), path.parent.name or model)
    return shape_from_preset(PRESET_ALIASES.get(model, model), model)


@dataclass(frozen=True)
class Plan:
    model: str
    gpu: str
    tensor_parallel_size: int
    dtype: str
    quantization: str | None
    kv_cache_dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    overhead_gib: float
    num_params: int
    quantized_params: int
    weight_bytes_per_param: float
    unquantized_bytes_per_param: float
    weights_total_gb: float
    weights_per_gpu_gb: float
    kv_bytes_per_token: int
    kv_bytes_per_token_per_gpu: int
    kv_gb_per_full_sequence: float
    gpu_memory_gb: float
    memory_budget_per_gpu_gb: float
    kv_cache_per_gpu_gb: float
    kv_cache_tokens: int
    full_length_sequences: int
    max_concurrency: float
    decode_ms_per_token: float
    decode_ms_per_token_full_context: float
    decode_step_ms_full_cache: float
    decode_tokens_per_s_full_cache: float
    smallest_tp_that_fits: int | None
    fits: bool

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _normalise_dtype(dtype: str, model_dtype: str) -> str:
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype == "auto":
        # vLLM's auto: the checkpoint's 16-bit dtype; fp32 checkpoints run in bf16 on GPUs.
        dtype = DTYPE_ALIASES.get(model_dtype, model_dtype)
        return dtype if dtype in ("float16", "bfloat16") else "bfloat16"
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown --dtype {dtype!r} (auto, {', '.join(DTYPE_BYTES)})")
    return dtype


def check_tensor_parallel(shape: ModelShape, tp: int, quantization: str | None = None) -> None:
    """The shapes vLLM refuses to start with: attention heads split evenly, KV heads
    split or replicated evenly, the MLP's intermediate size split evenly, and with int4
    weights, at TP > 1, no quantization group straddling two ranks (the row-parallel
    o_proj and down_proj take inputs of heads x head_dim / TP and intermediate / TP)."""
    if tp < 1:
        raise ValueError("--tensor-parallel-size must be at least 1")
    if shape.num_heads % tp:
        raise ValueError(f"{shape.num_heads} attention heads are not divisible by tensor parallel size {tp}")
    if shape.num_kv_heads % tp and tp % shape.num_kv_heads:
        raise ValueError(f"{shape.num_kv_heads} KV heads cannot be split or replicated over {tp} GPUs")
    if shape.intermediate_size % tp:
        raise ValueError(f"intermediate size {shape.intermediate_size} is not divisible by tensor parallel size {tp}")
    if quantization in INT4_METHODS and tp > 1:
        for layer, inputs in (("o_proj", shape.num_heads * shape.head_dim), ("down_proj", shape.intermediate_size)):
            if (inputs // tp) % INT4_GROUP_SIZE:
                raise ValueError(
                    f"{quantization}: {layer} has {inputs // tp} inputs per GPU at tensor parallel size {tp}, "
                    f"not a multiple of the quantization group size {INT4_GROUP_SIZE}"
                )


def check_max_model_len(shape: ModelShape, max_len: int) -> None:
    """vLLM refuses a --max-model-len above the model's context length."""
    if max_len < 1:
        raise ValueError("--max-model-len must be positive")
    if max_len > shape.max_position_embeddings:
        raise ValueError(
            f"--max-model-len {max_len} is above {shape.name}'s context of {shape.max_position_embeddings} "
            "tokens (max_position_embeddings, with rope scaling); vLLM refuses to start unless "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, and positions past it give wrong outputs"
        )


def plan(
    model: str | ModelShape = "lemur-70b-chat",
    gpu: str | GpuSpec = "h100-sxm",
    tensor_parallel_size: int = 4,
    dtype: str = "auto",
    kv_cache_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    quantization: str | None = None,
    overhead_gib: float = 3.0,
    _search_tp: bool = True,
) -> Plan:
    """The sizing of one vLLM replica. `overhead_gib` stands for what vLLM keeps
    per GPU besides weights and KV cache (CUDA context, NCCL buffers, CUDA
    graphs, peak activations of a prefill chunk): about 2-4 GiB on 80 GB GPUs."""
    shape = model if isinstance(model, ModelShape) else load_shape(model)
    spec = gpu if isinstance(gpu, GpuSpec) else find_gpu(gpu)
    tp = tensor_parallel_size
    if quantization is not None and quantization not in QUANT_BYTES:
        raise ValueError(f"unknown --quantization {quantization!r} ({', '.join(QUANT_BYTES)})")
    check_tensor_parallel(shape, tp, quantization)
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError("--gpu-memory-utilization must be in (0, 1]")
    dtype = _normalise_dtype(dtype, shape.dtype)
    kv_dtype = dtype if kv_cache_dtype == "auto" else DTYPE_ALIASES.get(kv_cache_dtype, kv_cache_dtype)
    if kv_dtype not in KV_DTYPE_BYTES:
        raise ValueError(f"unknown --kv-cache-dtype {kv_cache_dtype!r} (auto, {', '.join(KV_DTYPE_BYTES)})")
    max_len = max_model_len or shape.max_position_embeddings
    check_max_model_len(shape, max_len)

    # Linear layers at the quantized width; embeddings, lm_head and norms at --dtype.
    dbytes = DTYPE_BYTES[dtype]
    wbytes = QUANT_BYTES[quantization] if quantization else dbytes
    sharded_bytes = shape.linear_params() * wbytes + shape.embedding_params() * dbytes
    replicated_bytes = shape.replicated_params() * dbytes
    weights_total = sharded_bytes + replicated_bytes
    weights_gpu = sharded_bytes / tp + replicated_bytes
    kv_token = int(2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * KV_DTYPE_BYTES[kv_dtype])
    # Each rank holds num_kv_heads / tp heads, at least one (replicated when tp > num_kv_heads).
    kv_heads_gpu = max(1, shape.num_kv_heads // tp)
    kv_token_gpu = int(2 * shape.num_layers * kv_heads_gpu * shape.head_dim * KV_DTYPE_BYTES[kv_dtype])
    budget = spec.memory_bytes * gpu_memory_utilization
    kv_cache_gpu = max(0.0, budget - weights_gpu - overhead_gib * GIB)
    block = 16  # vLLM allocates the KV cache in blocks of 16 tokens
    tokens = int(kv_cache_gpu // (kv_token_gpu * block)) * block
    sequences = tokens // max_len

    bw = spec.bandwidth_tb_s * 1e12
    flops = spec.dense_tflops * 1e12
    decode_ms = weights_gpu / bw * 1e3
    decode_full_ctx_ms = (weights_gpu + max_len * kv_token_gpu) / bw * 1e3
    # A decode step with every full-length sequence in the batch: every KV byte is read once,
    # and 2 flops per parameter per sequence must be done; the slower roof wins.
    step_memory_s = (weights_gpu + sequences * max_len * kv_token_gpu) / bw
    step_compute_s = 2 * shape.num_params() / tp * sequences / flops
    step_ms = max(step_memory_s, step_compute_s) * 1e3
    smallest = None
    if _search_tp:
        for candidate in TP_CANDIDATES:
            try:
                check_tensor_parallel(shape, candidate, quantization)
            except ValueError:
                continue
            trial = plan(shape, spec, candidate, dtype, kv_cache_dtype, max_len, gpu_memory_utilization,
                         quantization, overhead_gib, _search_tp=False)  # fmt: skip
            if trial.fits:
                smallest = candidate
                break
    return Plan(
        model=shape.name,
        gpu=spec.name,
        tensor_parallel_size=tp,
        dtype=dtype,
        quantization=quantization,
        kv_cache_dtype=kv_dtype,
        max_model_len=max_len,
        gpu_memory_utilization=gpu_memory_utilization,
        overhead_gib=overhead_gib,
        num_params=shape.num_params(),
        quantized_params=shape.linear_params() if quantization else 0,
        weight_bytes_per_param=wbytes,
        unquantized_bytes_per_param=dbytes,
        weights_total_gb=weights_total / GB,
        weights_per_gpu_gb=weights_gpu / GB,
        kv_bytes_per_token=kv_token,
        kv_bytes_per_token_per_gpu=kv_token_gpu,
        kv_gb_per_full_sequence=kv_token * max_len / GB,
        gpu_memory_gb=spec.memory_bytes / GB,
        memory_budget_per_gpu_gb=budget / GB,
        kv_cache_per_gpu_gb=kv_cache_gpu / GB,
        kv_cache_tokens=tokens,
        full_length_sequences=sequences,
        max_concurrency=tokens / max_len,
        decode_ms_per_token=decode_ms,
        decode_ms_per_token_full_context=decode_full_ctx_ms,
        decode_step_ms_full_cache=step_ms,
        decode_tokens_per_s_full_cache=sequences / step_ms * 1e3 if sequences else 0.0,
        smallest_tp_that_fits=smallest,
        fits=sequences >= 1,
    )


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _gb(n: float) -> str:
    """Gigabytes with enough digits for tiny models too."""
    return f"{n:.2f} GB" if n >= 0.1 else f"{n * 1e3:.2f} MB"


def _count(n: float) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e8 else f"{n / 1e6:.2f} M"


def _bytes(n: float) -> str:
    return f"{n:.4g} byte" + ("" if n == 1 else "s")


def _params(p: Plan) -> str:
    if not p.quantization:
        return f"{_count(p.num_params)} ({_bytes(p.weight_bytes_per_param)} each)"
    return (
        f"{_count(p.num_params)} (linear layers {_count(p.quantized_params)} at {_bytes(p.weight_bytes_per_param)}, "
        f"{p.quantization}; embeddings, LM head, norms {_count(p.num_params - p.quantized_params)} at "
        f"{_bytes(p.unquantized_bytes_per_param)}, {p.dtype})"
    )


def format_plan(p: Plan) -> str:
    quant = f", --quantization {p.quantization}" if p.quantization else ""
    smallest = (
        f"TP {p.smallest_tp_that_fits}"
        if p.smallest_tp_that_fits
        else f"none up to TP {TP_CANDIDATES[-1]} (quantize, shorten the context or use bigger GPUs)"
    )
    verdict = "fits" if p.fits else "DOES NOT FIT: not even one full-length sequence"
    lines = [
        f"{p.model} on {p.tensor_parallel_size} x {p.gpu} (tensor parallel {p.tensor_parallel_size}): {verdict}",
        f"  dtype {p.dtype}{quant}, KV cache {p.kv_cache_dtype}, max model len {p.max_model_len:,}",
        f"  parameters             {_params(p)}",
        f"  weights                {_gb(p.weights_total_gb)} in all, {_gb(p.weights_per_gpu_gb)} per GPU",
        f"  KV cache per token     {_kib(p.kv_bytes_per_token)} ({_kib(p.kv_bytes_per_token_per_gpu)} per GPU);"
        f" {_gb(p.kv_gb_per_full_sequence)} per full sequence",
        f"  memory per GPU         {p.gpu_memory_gb:.1f} GB x {p.gpu_memory_utilization:g} = "
        f"{p.memory_budget_per_gpu_gb:.1f} GB: weights {_gb(p.weights_per_gpu_gb)} + overhead "
        f"{_gb(p.overhead_gib * GIB / GB)} + KV cache {_gb(p.kv_cache_per_gpu_gb)}",
        f"  KV-cache capacity      {p.kv_cache_tokens:,} tokens = {p.full_length_sequences:,} sequences of "
        f"{p.max_model_len:,} tokens (concurrency {p.max_concurrency:.2f}x)",
        f"  decode lower bound     {p.decode_ms_per_token:.2f} ms/token at batch 1 "
        f"({p.decode_ms_per_token_full_context:.2f} ms at a full context)",
    ]
    if p.fits:
        lines.append(
            f"  full-cache decode step {p.decode_step_ms_full_cache:.1f} ms for {p.full_length_sequences:,} sequences:"
            f" at most {p.decode_tokens_per_s_full_cache:,.0f} tokens/s"
        )
    lines += [
        f"  smallest TP that fits  {smallest}",
        "  (roofline bounds: HBM bandwidth and dense tensor flops from the datasheet; real engines are slower)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemur plan", description="Size a vLLM deployment before renting GPUs.")
    parser.add_argument(
        "model",
        nargs="?",
        default="lemur-70b-chat",
        help="lemur-70b-chat (default), lemur-tiny-chat, llama-2-70b, llama-3-70b, a training preset "
        "(tiny, 1b, 7b, 70b), a config.json or a checkpoint directory",
    )
    parser.add_argument("--gpu", default="h100-sxm", help="GPU type (default %(default)s; --list-gpus)")
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=4, help="GPUs per replica (default 4)")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16, float32")
    parser.add_argument("--quantization", default=None, choices=sorted(QUANT_BYTES), help="weight quantization")
    parser.add_argument("--kv-cache-dtype", default="auto", help="auto, fp8, fp8_e4m3, fp8_e5m2, bfloat16, ...")
    parser.add_argument("--max-model-len", type=int, default=None, help="default: the model's context")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="vLLM's (default 0.9)")
    parser.add_argument("--overhead-gib", type=float, default=3.0, help="non-KV memory per GPU (default 3 GiB)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--list-gpus", action="store_true", help="list the GPU table and exit")
    args = parser.parse_args(argv)
    if args.list_gpus:
        for key, g in GPUS.items():
            print(f"{key:<14} {g.name:<26} {g.memory_bytes / GB:6.1f} GB  {g.bandwidth_tb_s:5.2f} TB/s  "
                  f"{g.dense_tflops:6.0f} TFLOPS bf16")  # fmt: skip
        return 0
    try:
        result = plan(
            args.model,
            args.gpu,
            args.tensor_parallel_size,
            args.dtype,
            args.kv_cache_dtype,
            args.max_model_len,
            args.gpu_memory_utilization,
            args.quantization,
            args.overhead_gib,
        )
    except (ValueError, FileNotFoundError, KeyError) as exc:
        parser.error(str(exc).strip("'\""))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_plan(result))
    return 0 if result.fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
