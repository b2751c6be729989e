"""The vLLM adapter: the only module of the gateway that imports vllm.

Runs vLLM's v1 `AsyncLLM` inside the gateway process (the engine core itself
runs in a child process that vLLM spawns) and translates between our engine
dataclasses and vLLM's request/output types.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lemur.server.config import DEFAULT_CPU_KVCACHE_GIB
from lemur.server.engine.base import (
    AdapterRef,
    BaseShapes,
    EngineDeadError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    LoraLimits,
    ModelInfo,
    SamplingSpec,
    StructuredSpec,
    TokenLogprob,
)
from lemur.server.engine.death import EngineDeath, anything_died, diagnose, read_events
from lemur.server.engine.vllm_hooks import EVENTS_ENV

# vLLM's CPU backend refuses to start without a KV-cache budget (GiB).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KVCACHE_GIB)

from vllm import SamplingParams
from vllm.config import StructuredOutputsConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs import tokens_input
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.version import __version__ as VLLM_VERSION

from lemur.server.engine.nodes import lost_nodes
from lemur.server.engine.vllm_node import layout, prepare_node

__all__ = [
    "VLLM_VERSION",
    "ServingDefaults",
    "VllmEngine",
    "engine_args_from_namespace",
    "make_parser",
    "serving_defaults",
]

logger = logging.getLogger("lemur.engine")
# A node check waits this long for the engine core to take it between steps:
# far beyond any healthy step, so that only a stuck one trips it.
STEP_LIMIT_S = 30.0
# How long the engine core may take to exit once it is dead, for its exit code.
EXIT_CODE_WAIT_S = 3.0

# Generation-config keys that become per-request defaults when the request omits them.
_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class EngineArgParser(FlexibleArgumentParser):
    """vLLM's parser, whose plain `--help` lists only its config groups
    (`--help=GROUP` and `--help=all` show their flags). The groups named in
    `full_help_groups` (the gateway's) are shown in full first: each flag
    once, in its group, with its default."""

    full_help_groups: list[str] = []

    def format_help(self) -> str:
        if self._search_keyword is not None or not self.full_help_groups:
            return super().format_help()
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        for group in self._action_groups:
            if group.title in self.full_help_groups:
                formatter.start_section(group.title)
                formatter.add_arguments(group._group_actions)
                formatter.end_section()
        lines = [
            f"  {group.title:<24} {(group.description or '').strip().splitlines()[0] if group.description else ''}"
            for group in self._action_groups
            if group._group_actions and group.title not in self.full_help_groups and group.title != "options"
        ]
        head = "vLLM engine flags, by config group (`--help=GROUP` shows one, `--help=all` every flag):"
        return formatter.format_help() + "\n" + head + "\n" + "\n".join(lines) + "\n"


def make_parser(prog: str, description: str, usage: str | None = None) -> EngineArgParser:
    """A parser that already holds every vLLM engine flag. One default
    differs: structured outputs use xgrammar with no free whitespace in JSON,
    so that a weak model cannot loop on spaces inside a grammar (override with
    --structured-outputs-config '{"backend": ..., "disable_any_whitespace": false}')."""
    parser = EngineArgParser(prog=prog, description=description, usage=usage)
    AsyncEngineArgs.add_cli_args(parser)
    no_free_whitespace = StructuredOutputsConfig(backend="xgrammar", disable_any_whitespace=True)
    parser.set_defaults(structured_outputs_config=no_free_whitespace)
    return parser


def engine_args_from_namespace(ns: argparse.Namespace) -> AsyncEngineArgs:
    return AsyncEngineArgs.from_cli_args(ns)


def _dtype_name(dtype: object) -> str:
    """torch.bfloat16 (or "torch.bfloat16") -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ServingDefaults:
    """What vLLM resolves for a model before loading it (for `lemur env`)."""

    platform: str  # "cpu", "cuda", ...
    dtype: str  # what the weights run in
    checkpoint_dtype: str
    max_model_len: int
    kv_bytes_per_token: int  # all layers, K and V, whole model (before tensor parallel)


def serving_defaults(model: str, dtype: str = "auto") -> ServingDefaults:
    """vLLM's own resolution (ModelConfig): on a CPU a float32 checkpoint runs
    in bfloat16 unless --dtype says otherwise. Reads only the config."""
    config = AsyncEngineArgs(model=model, dtype=dtype).create_model_config()
    text = config.hf_text_config
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_size = config.get_head_size()
    kv_bytes = 2 * text.num_hidden_layers * kv_heads * head_size * config.dtype.itemsize
    checkpoint = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None) or "unknown"
    return ServingDefaults(
        platform=current_platform.device_type,
        dtype=_dtype_name(config.dtype),
        checkpoint_dtype=_dtype_name(checkpoint),
        max_model_len=config.max_model_len,
        kv_bytes_per_token=kv_bytes,
    )


def _structured(spec: StructuredSpec | None) -> StructuredOutputsParams | None:
    if spec is None:
        return None
    if spec.kind == "grammar":
        return StructuredOutputsParams(grammar=spec.spec)
    return StructuredOutputsParams(structural_tag=spec.spec)


def _rejected(exc: VLLMClientError, spec: SamplingSpec) -> EngineRejectedRequest:
    """vLLM refused the request: name the field (a grammar's, when vLLM names none)."""
    param = getattr(exc, "parameter", None) or (spec.structured.param if spec.structured is not None else None)
    return EngineRejectedRequest(str(exc), param)


def _to_sampling_params(spec: SamplingSpec) -> SamplingParams:
    try:
        return SamplingParams(
            n=spec.n,
            max_tokens=spec.max_tokens,
            min_tokens=spec.min_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            min_p=spec.min_p,
            seed=spec.seed,
            presence_penalty=spec.presence_penalty,
            frequency_penalty=spec.frequency_penalty,
            repetition_penalty=spec.repetition_penalty,
            stop=list(spec.stop) or None,
            stop_token_ids=list(spec.stop_token_ids) or None,
            ignore_eos=spec.ignore_eos,
            logit_bias=dict(spec.logit_bias) or None,
            logprobs=spec.logprobs,
            prompt_logprobs=spec.prompt_logprobs,
            skip_special_tokens=spec.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
            structured_outputs=_structured(spec.structured),
        )
    except VLLMClientError as exc:
        raise _rejected(exc, spec) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise EngineRejectedRequest(str(exc)) from exc


# What OpenAI reports for a token that cannot be sampled. A grammar masks
# tokens to -inf, and JSON has no infinity (a 500 whole, nulls streamed).
MASKED_LOGPROB = -9999.0


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else MASKED_LOGPROB


def _token_logprob(token_id: int, candidates: dict[int, Any], k: int) -> TokenLogprob:
    """`candidates` is vLLM's {token_id: Logprob}: the top-k plus the sampled token."""
    chosen = candidates[token_id]
    ranked = sorted(candidates.items(), key=lambda kv: kv[1].rank or 0)
    top = tuple((tid, lp.decoded_token or "", _finite(lp.logprob)) for tid, lp in ranked if (lp.rank or 0) <= k)
    return TokenLogprob(token_id, chosen.decoded_token or "", _finite(chosen.logprob), top[:k])


def _sample_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[dict[int, Any]] | None, k: int | None
) -> tuple[TokenLogprob, ...] | None:
    if logprobs is None or k is None:
        return None
    return tuple(_token_logprob(t, lp, k) for t, lp in zip(token_ids, logprobs, strict=True))


def _prompt_logprobs(
    token_ids: Sequence[int], logprobs: Sequence[dict[int, Any] | None], k: int
) -> tuple[TokenLogprob | None, ...]:
    return tuple(None if lp is None else _token_logprob(t, lp, k) for t, lp in zip(token_ids, logprobs, strict=True))


def _shapes(model_config: Any) -> BaseShapes:
    text = model_config.hf_text_config
    heads = text.num_attention_heads
    return BaseShapes(
        hidden_size=text.hidden_size,
        intermediate_size=getattr(text, "intermediate_size", 0),
        num_layers=text.num_hidden_layers,
        num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=model_config.get_head_size(),
    )


def _lora_limits(lora_config: Any) -> LoraLimits | None:
    return None if lora_config is None else LoraLimits(lora_config.max_loras, lora_config.max_lora_rank)


def _lora_request(adapter: AdapterRef | None) -> LoRARequest | None:
    return None if adapter is None else LoRARequest(adapter.name, adapter.int_id, adapter.path)


class VllmEngine:
    """Our `Engine` over vLLM's `AsyncLLM`."""

    def __init__(self, llm: AsyncLLM, name: str, path: str, tokenizer: str, events: Path | None = None) -> None:
        self._llm = llm
        self._events = events
        cfg = llm.model_config
        defaults = cfg.get_diff_sampling_param()
        self.info = ModelInfo(
            name=name,
            path=path,
            tokenizer=tokenizer,
            max_model_len=cfg.max_model_len,
            vocab_size=cfg.get_vocab_size(),
            created=int(time.time()),
            dtype=_dtype_name(cfg.dtype),
            generation_defaults={k: defaults[k] for k in _DEFAULT_KEYS if k in defaults},
            json_whitespace=not llm.vllm_config.structured_outputs_config.disable_any_whitespace,
            shapes=_shapes(cfg),
            lora=_lora_limits(llm.vllm_config.lora_config),
            nodes=llm.vllm_config.parallel_config.nnodes,
        )
        self._lost_nodes: EngineDeath | None = None  # set when a node stopped answering

    @classmethod
    def start(cls, args: AsyncEngineArgs, name: str | None = None) -> VllmEngine:
        prepare_node(args)  # the environment its processes inherit
        # The engine processes report fatal events here (server/engine/vllm_hooks.py).
        events = Path(tempfile.mkdtemp(prefix="lemur-engine-")) / "events.jsonl"
        os.environ[EVENTS_ENV] = str(events)
        try:
            llm = AsyncLLM.from_engine_args(args)
        except Exception:
            # A process that died while starting is named; a bad argument is not a death.
            if anything_died(found := read_events(events)):
                death = diagnose(found, {})
                logger.error("%s", death.summary().replace("died", "died while starting", 1))
                if (block := death.traceback_block()) is not None:
                    logger.error(block)
            raise
        served = llm.model_config.served_model_name
        if name is None:
            name = served[0] if isinstance(served, list) else served
        path, tokenizer = args.model, args.tokenizer or args.model
        return cls(llm, name=name or Path(args.model).name, path=path, tokenizer=tokenizer, events=events)

    def death_report(self) -> EngineDeath:
        """Why the engine died. Blocks up to EXIT_CODE_WAIT_S for the engine
        core to exit (its exit code tells a signal from an error)."""
        if self._lost_nodes is not None and not self._llm.errored:
            return self._lost_nodes
        manager = getattr(getattr(self._llm.engine_core, "resources", None), "engine_manager", None)
        exitcodes: dict[str, int] = {}
        deadline = time.monotonic() + EXIT_CODE_WAIT_S
        while manager is not None and hasattr(manager, "finished_procs"):
            exitcodes = manager.finished_procs()
            if len(exitcodes) == len(manager.processes) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        return diagnose(read_events(self._events), exitcodes)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        spec = request.sampling
        params = _to_sampling_params(spec)  # raises EngineRejectedRequest
        prompt = tokens_input(list(request.prompt_token_ids), cache_salt=request.cache_salt)
        first = True
        try:
            lora = _lora_request(request.adapter)
            async for out in self._llm.generate(prompt, params, request.request_id, lora_request=lora):
                prompt_lps, cached = None, (out.num_cached_tokens if first else None)
                if first and spec.prompt_logprobs is not None and out.prompt_logprobs is not None:
                    prompt_lps = _prompt_logprobs(request.prompt_token_ids, out.prompt_logprobs, spec.prompt_logprobs)
                first = False
                for c in out.outputs:
                    yield EngineOutput(
                        index=c.index,
                        text=c.text,
                        token_ids=tuple(c.token_ids),
                        logprobs=_sample_logprobs(c.token_ids, c.logprobs, spec.logprobs),
                        finish_reason=c.finish_reason,
                        stop_reason=c.stop_reason,
                        prompt_logprobs=prompt_lps,
                        cached_tokens=cached,
                    )
                    prompt_lps = None
        except VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except VLLMClientError as exc:  # e.g. a grammar the structured-output backend refuses
            raise _rejected(exc, spec) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        try:
            loaded = await self._llm.add_lora(_lora_request(adapter))
        except VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except Exception as exc:  # the worker refused the files: the adapter's fault, not the engine's
            message = f"the engine could not load adapter {adapter.name!r}: {exc}"
            raise EngineRejectedRequest(message, "lora_path") from exc
        if not loaded:
            raise EngineRejectedRequest(f"the engine could not load adapter {adapter.name!r}", "lora_path")

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        try:
            await self._llm.remove_lora(adapter.int_id)
        except VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc

    def is_alive(self) -> bool:
        return not self._llm.errored and self._lost_nodes is None

    async def check_nodes(self, within: float) -> None:
        """Every rank answers vLLM's `check_health` within `within` seconds. A node
        that died or froze does not (vLLM itself notices neither while idle,
        and a frozen one hangs the next request for its execute timeout).
        `within` counts from when the engine core takes the call, between
        steps; STEP_LIMIT_S bounds the wait for that (a step that never ends:
        a rank froze mid-step)."""
        if self.info.nodes <= 1 or not self.is_alive():
            return
        try:
            await asyncio.wait_for(self._llm.collective_rpc("check_health", timeout=within), STEP_LIMIT_S)
        except Exception as exc:
            if self._llm.errored:  # a local rank died: vLLM's own report says which
                raise EngineDeadError(str(exc)) from exc
            self._lost_nodes = lost_nodes(layout(self._llm.vllm_config.parallel_config), within, exc)
            raise EngineDeadError(self._lost_nodes.summary()) from exc

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:  # vLLM raises its own dead-engine error
            raise EngineDeadError(str(exc)) from exc

    async def shutdown(self) -> None:
        self._llm.shutdown()
        if self._events is not None:
            shutil.rmtree(self._events.parent, ignore_errors=True)
