"""The plugin's ops as vLLM builds and runs them: eager and under torch.compile
with fullgraph=True (vLLM's graph mode), plus torch.library's own op checks."""

from __future__ import annotations

import pytest
import torch

from lemur.kernels import ops
from lemur.kernels.activation import silu_and_mul_reference
from lemur.kernels.rmsnorm import fused_add_rmsnorm_reference, rmsnorm_reference
from lemur.kernels.rotary import rotary_embedding_neox_reference
from tests.kernels.conftest import DEVICE, assert_close

vllm_config = pytest.importorskip("vllm.config")


@pytest.fixture(scope="module")
def layers() -> dict[str, torch.nn.Module]:
    from lemur.kernels.vllm_ops import LemurRMSNorm, LemurRotaryEmbedding, LemurSiluAndMul

    with vllm_config.set_current_vllm_config(vllm_config.VllmConfig()):
        norm = LemurRMSNorm(96, eps=1e-5)
        norm.weight.data = torch.randn(96, generator=torch.Generator().manual_seed(0))
        rope = LemurRotaryEmbedding(32, 32, 256, 10000.0, True, torch.float32)
        return {"norm": norm.to(DEVICE), "act": LemurSiluAndMul().to(DEVICE), "rope": rope.to(DEVICE)}


def run_layers(layers: dict[str, torch.nn.Module], x: torch.Tensor, res: torch.Tensor, gate_up: torch.Tensor,
               pos: torch.Tensor, qkv: torch.Tensor) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """One Llama-block's worth of the three ops, in vLLM's calling conventions."""
    normed, res = layers["norm"](x, res)
    plain = layers["norm"](res)
    act = layers["act"](gate_up)
    q, k = qkv[:, : 4 * 32], qkv[:, 4 * 32 : 6 * 32]
    q, k = layers["rope"](pos, q, k)
    return normed, res, plain, act, q, k


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "torch.compile-fullgraph"])
def test_plugin_layers_match_references(
    layers: dict[str, torch.nn.Module], compiled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lemur.kernels import vllm_ops

    monkeypatch.setattr(vllm_ops, "_announced", set())  # first calls, as in a fresh vLLM worker
    g = torch.Generator().manual_seed(1)
    x, res = torch.randn(5, 96, generator=g).to(DEVICE), torch.randn(5, 96, generator=g).to(DEVICE)
    gate_up = torch.randn(5, 2 * 80, generator=g).to(DEVICE)
    pos = torch.tensor([0, 3, 17, 255, 8], device=DEVICE)
    qkv = torch.randn(5, 8 * 32, generator=g).to(DEVICE)

    w = layers["norm"].weight.data
    x_ref, res_ref = x.clone(), res.clone()
    normed_ref, _ = fused_add_rmsnorm_reference(x_ref, res_ref, w, 1e-5)
    plain_ref = rmsnorm_reference(res_ref, w, 1e-5)
    qkv_ref = qkv.clone()
    rotary_embedding_neox_reference(pos, qkv_ref[:, :128], qkv_ref[:, 128:192], 32, layers["rope"].cos_sin_cache)

    fn = torch.compile(run_layers, fullgraph=True, backend="eager") if compiled else run_layers
    normed, new_res, plain, act, q, _k = fn(layers, x, res, gate_up, pos, qkv)
    assert_close(normed, normed_ref, torch.float32)
    assert_close(new_res, res_ref, torch.float32)
    assert_close(res, res_ref, torch.float32)  # in place, as vLLM expects
    assert_close(plain, plain_ref, torch.float32)
    assert_close(act, silu_and_mul_reference(gate_up), torch.float32)
    assert_close(qkv, qkv_ref, torch.float32)  # q and k rotated in place through the views
    assert q.data_ptr() == qkv.data_ptr()


def test_custom_ops_pass_torch_library_opcheck() -> None:
    """Schemas, mutation declarations and fake implementations are consistent."""
    g = torch.Generator().manual_seed(2)
    x, res, w = (torch.randn(*s, generator=g).to(DEVICE) for s in ((4, 64), (4, 64), (64,)))
    qkv = torch.randn(4, 6 * 32, generator=g).to(DEVICE)
    inv = 1.0 / 10000 ** (torch.arange(0, 32, 2, dtype=torch.float32) / 32)
    freqs = torch.outer(torch.arange(64, dtype=torch.float32), inv)
    cache = torch.cat((freqs.cos(), freqs.sin()), -1).to(DEVICE)
    pos = torch.tensor([1, 2, 3, 60], device=DEVICE)
    cases = [
        (torch.ops.lemur.rms_norm.default, (x, w, 1e-5)),
        (torch.ops.lemur.fused_add_rms_norm.default, (x.clone(), res.clone(), w, 1e-5)),
        (torch.ops.lemur.silu_and_mul.default, (torch.randn(4, 128, generator=g).to(DEVICE),)),
        (torch.ops.lemur.rotary_embedding_neox.default, (pos, qkv[:, :128], qkv[:, 128:160], 32, cache, 32)),
    ]
    assert ops.backend_for(x) in ("triton", "triton-interpreter")
    for op, args in cases:
        torch.library.opcheck(op, args)
