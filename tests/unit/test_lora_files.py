"""The gateway's adapter checks and registry (pure logic: no engine).

Adapters are made with peft for a model of the tiny test checkpoint's shapes
(and, to be refused, for other shapes); the checks read only their files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lemur.server.engine.base import BaseShapes, LoraLimits
from lemur.server.errors import ModelNotFound
from lemur.server.lora_registry import AdapterError, AdapterRegistry, inspect_adapter, read_safetensors_header
from tests.support.lora import forge_weights, make_adapter, tiny_llama_config

SHAPES = BaseShapes(hidden_size=128, intermediate_size=352, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32)
LIMITS = LoraLimits(max_loras=2, max_rank=8)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    config = tiny_llama_config()
    return {
        "good": make_adapter(None, root / "good", rank=4, config=config),
        "all": make_adapter(
            None,
            root / "all",
            rank=8,
            config=config,
            targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ),
        "rank16": make_adapter(None, root / "rank16", rank=16, config=config),
        "wide": make_adapter(None, root / "wide", config=tiny_llama_config(hidden=64)),
        "deep": make_adapter(None, root / "deep", config=tiny_llama_config(layers=3)),
        "dora": make_adapter(None, root / "dora", config=config, use_dora=True),
    }


def test_a_fitting_adapter_passes_with_its_rank(adapters) -> None:
    assert inspect_adapter(adapters["good"], SHAPES, 8) == (4, "")
    assert inspect_adapter(adapters["all"], SHAPES, 8)[0] == 8


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("rank16", "rank 16 exceeds this server's --max-lora-rank 8"),
        ("wide", "made for a different base model"),
        ("deep", "made for a different base model"),
        ("dora", "use_dora, which vLLM does not serve"),
    ],
)
def test_adapters_that_do_not_fit_are_refused(adapters, which: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as err:
        inspect_adapter(adapters[which], SHAPES, 8)
    assert err.value.status_code == 400 and err.value.param == "lora_path"


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_broken_files_are_refused_with_the_reason(adapters, tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="does not exist"):
        inspect_adapter(tmp_path / "nowhere", SHAPES, 8)
    truncated = _copy(adapters["good"], tmp_path / "truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(AdapterError, match="corrupt or truncated"):
        inspect_adapter(truncated, SHAPES, 8)
    garbage = _copy(adapters["good"], tmp_path / "garbage")
    (garbage / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(AdapterError, match="not a valid safetensors file"):
        inspect_adapter(garbage, SHAPES, 8)
    huge = _copy(adapters["good"], tmp_path / "huge")
    (huge / "adapter_model.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(AdapterError, match="not a valid safetensors file"):
        inspect_adapter(huge, SHAPES, 8)
    bad_config = _copy(adapters["good"], tmp_path / "bad-config")
    (bad_config / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterError, match="cannot be read"):
        inspect_adapter(bad_config, SHAPES, 8)
    not_lora = _copy(adapters["good"], tmp_path / "not-lora")
    (not_lora / "adapter_config.json").write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    with pytest.raises(AdapterError, match="not a LoRA adapter"):
        inspect_adapter(not_lora, SHAPES, 8)
    no_weights = _copy(adapters["good"], tmp_path / "no-weights")
    (no_weights / "adapter_model.safetensors").unlink()
    with pytest.raises(AdapterError, match=r"has no adapter_model\.safetensors"):
        inspect_adapter(no_weights, SHAPES, 8)


def test_header_reader_sees_every_tensor(adapters) -> None:
    header = read_safetensors_header(adapters["all"] / "adapter_model.safetensors")
    assert len(header) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    q_a = next(t for n, t in header.items() if "layers.0.self_attn.q_proj.lora_A" in n)
    assert q_a["shape"] == [8, 128]


def test_registry_names_ids_and_removal(adapters) -> None:
    registry = AdapterRegistry(("base",), SHAPES, LIMITS)
    first = registry.check("style", str(adapters["good"]))
    registry.register(first)
    assert registry.get("style") == first and first.ref.int_id == 1 and first.rank == 4
    for name, code in (("style", "adapter_exists"), ("base", "adapter_exists"), ("bad name!", "invalid_adapter")):
        with pytest.raises(AdapterError) as err:
            registry.check(name, str(adapters["good"]))
        assert err.value.code == code
    assert registry.remove("style") == first and registry.get("style") is None
    with pytest.raises(ModelNotFound):
        registry.remove("style")
    again = registry.check("style", str(adapters["good"]))
    assert again.ref.int_id == 2  # never reused: the engine must not mistake it for the old weights


def test_a_server_without_lora_refuses_adapters(adapters) -> None:
    registry = AdapterRegistry(("base",), SHAPES, None)
    with pytest.raises(AdapterError, match="without LoRA support"):
        registry.check("style", str(adapters["good"]))


@pytest.mark.parametrize("name", ["bgmv_shrink", "bgmv_expand", "bgmv_expand_slice"])
def test_cpu_lora_ops_leave_base_model_rows_alone(name: str) -> None:
    """vLLM 0.32's CPU ops applied the last adapter slot to rows of index -1
    (base-model tokens); with the fix those rows are untouched and the others
    get exactly what the original op computes."""
    import torch
    from vllm.lora.ops.torch_ops import lora_ops

    from lemur.server.engine.cpu_lora_fix import skip_base_rows

    original = getattr(getattr(lora_ops, name), "__wrapped__", getattr(lora_ops, name))
    torch.manual_seed(0)
    rows, slots, d_in, d_out = 5, 2, 16, 8
    weights = torch.randn(slots, 1, d_out, d_in)  # (slots, 1, out, in), vLLM's stacked layout
    inputs = torch.randn(rows, d_in)
    indices = torch.tensor([-1, 0, 1, -1, 1])
    extra = (0, d_out) if name == "bgmv_expand_slice" else ()
    fixed_out, plain_out = torch.full((rows, d_out), 7.0), torch.full((rows, d_out), 7.0)
    skip_base_rows(original)(inputs, weights, fixed_out, indices, *extra)
    original(inputs, weights, plain_out, indices, *extra)
    base = indices < 0
    assert torch.equal(fixed_out[base], torch.full((2, d_out), 7.0))
    assert torch.equal(fixed_out[~base], plain_out[~base])
    assert not torch.equal(plain_out[base], fixed_out[base])  # the bug: the last slot was applied there


def test_odd_names_and_malformed_fields_are_400_not_500(adapters, tmp_path: Path) -> None:
    registry = AdapterRegistry(("base",), SHAPES, LIMITS)
    with pytest.raises(AdapterError, match="not a valid model name"):
        registry.check("style\n", str(adapters["good"]))  # a trailing newline would reach logs and labels
    odd = _copy(adapters["good"], tmp_path / "odd")
    config = json.loads((odd / "adapter_config.json").read_text())
    (odd / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": ["not", "a", "dict"]}))
    with pytest.raises(AdapterError, match="malformed adapter files"):
        inspect_adapter(odd, SHAPES, 8)
    (odd / "adapter_config.json").write_text(json.dumps(config))
    forge_weights(odd, {"dtype": "F32", "shape": [None], "data_offsets": [0, 4]})
    with pytest.raises(AdapterError, match="corrupt or truncated"):
        inspect_adapter(odd, SHAPES, 8)


@pytest.mark.parametrize(
    "entry",
    [
        {"dtype": "F32", "shape": [10**15, "x"], "data_offsets": [0, 4]},  # was 10**15 * "x": gigabytes, then a 500
        {"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [1] * 9 + [4], "data_offsets": [0, 16]},
        {"dtype": "F32", "shape": [True, 1], "data_offsets": [0, 4]},
        {"dtype": "F32", "shape": [1, 1], "data_offsets": [0, 4, 8]},
        {"dtype": "F32", "shape": [1, 1], "data_offsets": ["0", 4]},
        {"dtype": "F32", "shape": [1, 1], "data_offsets": [4, 0]},
    ],
)
def test_every_dimension_is_a_small_int_before_any_arithmetic(adapters, tmp_path: Path, entry: dict) -> None:
    forged = forge_weights(_copy(adapters["good"], tmp_path / "forged"), entry, b"\0" * 16)
    with pytest.raises(AdapterError, match="corrupt or truncated") as err:
        inspect_adapter(forged, SHAPES, 8)
    assert err.value.status_code == 400 and err.value.code == "invalid_adapter"


def test_requests_hold_their_adapter_until_they_end(adapters) -> None:
    """An unload waits for the requests running with the adapter; a request
    that reaches the engine after the unload gets 404."""
    import asyncio

    registry = AdapterRegistry(("base",), SHAPES, LIMITS)
    first, second = registry.check("a", str(adapters["good"])), registry.check("b", str(adapters["good"]))
    assert second.ref.int_id != first.ref.int_id  # ids are taken at check, even if a load then fails
    registry.register(first)
    registry.acquire(first.ref)

    async def unload_then_release() -> list[str]:
        order: list[str] = []

        async def unload() -> None:
            registry.remove("a")
            await registry.wait_unused(first.ref)
            order.append("engine drops it")

        task = asyncio.create_task(unload())
        await asyncio.sleep(0.01)
        order.append("request ends")
        registry.release(first.ref)
        await task
        return order

    assert asyncio.run(unload_then_release()) == ["request ends", "engine drops it"]
    with pytest.raises(ModelNotFound, match="was unloaded"):
        registry.acquire(first.ref)


def test_the_engine_gets_a_private_copy_that_outlives_the_folder(adapters, tmp_path: Path) -> None:
    """Finding 2: vLLM reloads an evicted adapter from its path; the path it
    gets is the gateway's own copy of the checked files, not the user's folder."""
    registry = AdapterRegistry(("base",), SHAPES, LIMITS)
    folder = _copy(adapters["good"], tmp_path / "mine")
    adapter = registry.check("style", str(folder))
    copy = Path(adapter.ref.path)
    assert copy != folder and adapter.source == str(folder.resolve())
    original = (folder / "adapter_model.safetensors").read_bytes()
    (folder / "adapter_model.safetensors").write_bytes(b"rewritten")
    assert (copy / "adapter_model.safetensors").read_bytes() == original
    assert oct(copy.parent.stat().st_mode & 0o777) == "0o700"
    registry.discard(adapter)
    assert not copy.exists()
    with pytest.raises(AdapterError) as err:  # the message names the user's folder, never the copy
        registry.check("style", str(folder))
    assert str(folder.resolve()) in err.value.message and str(copy.parent) not in err.value.message
    assert list(copy.parent.iterdir()) == []  # the refused copy is gone too
    registry.close()
    assert not copy.parent.exists()
