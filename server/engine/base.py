"""Engine interface of the gateway.

The engine never sees HTTP and the routes never see tensors: the serving layer
turns an OpenAI request into an `EngineRequest` (token ids + `SamplingSpec`)
and consumes `EngineOutput` deltas. `server.engine.vllm_engine` adapts vLLM to
this interface; unit tests of pure logic may use a fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from lemur.server.engine.death import EngineDeath


class EngineDeadError(RuntimeError):
    """The engine can no longer serve requests."""


class EngineRejectedRequest(ValueError):
    """The engine refused a request's parameters (a client error)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class StructuredSpec:
    """A grammar the output must follow (vLLM's structured outputs).
    `kind` "grammar": `spec` is EBNF; "structural_tag": `spec` is an xgrammar
    structural tag (tool calls). `param` names the request field it came
    from, for errors."""

    kind: Literal["grammar", "structural_tag"]
    spec: str
    param: str


@dataclass(frozen=True)
class SamplingSpec:
    n: int = 1
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: disabled
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()
    logprobs: int | None = None  # top-k alternatives per sampled token
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    structured: StructuredSpec | None = None


@dataclass(frozen=True)
class AdapterRef:
    """A LoRA adapter as the engine knows it: a name, a numeric id unique for
    the engine's lifetime, and the PEFT directory it loads from."""

    name: str
    int_id: int
    path: str


@dataclass(frozen=True)
class EngineRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    sampling: SamplingSpec
    # Requests share prefix-cache blocks only within one salt (one tenant), so
    # nobody can time another key's prompts through cache hits.
    cache_salt: str | None = None
    adapter: AdapterRef | None = None  # None: the base model


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    # Alternatives, most likely first: (token_id, token, logprob).
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class EngineOutput:
    """What one choice produced since the previous output (a delta)."""

    index: int
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    stop_reason: int | str | None = None
    # Set on the first output of a request that asked for prompt logprobs;
    # the first prompt token has none.
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    # Set on the first outputs of a request: prompt tokens found in the prefix cache.
    cached_tokens: int | None = None


@dataclass(frozen=True)
class BaseShapes:
    """The base model's linear layers, which an adapter's tensors must fit."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class LoraLimits:
    """What the engine was started with for adapters (--max-loras, --max-lora-rank)."""

    max_loras: int
    max_rank: int


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    tokenizer: str
    max_model_len: int
    vocab_size: int
    created: int
    dtype: str = "unknown"  # the weights' dtype in the engine: "bfloat16", "float32", ...
    # Whether the engine's grammars let JSON carry free whitespace (vLLM's
    # --structured-outputs-config disable_any_whitespace, inverted).
    json_whitespace: bool = False
    generation_defaults: dict[str, float | int] = field(default_factory=dict)
    shapes: BaseShapes | None = None
    lora: LoraLimits | None = None  # None: the engine serves no adapters
    nodes: int = 1  # machines the model spans (vLLM's --nnodes)


class Engine(Protocol):
    info: ModelInfo

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream the request's outputs; closing the iterator aborts the request."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def add_adapter(self, adapter: AdapterRef) -> None:
        """Load an adapter now (requests naming it would load it on demand);
        `EngineRejectedRequest` if the engine cannot load it."""
        ...

    async def remove_adapter(self, adapter: AdapterRef) -> None: ...

    async def check_health(self) -> None:
        """Raise `EngineDeadError` if the engine cannot serve."""
        ...

    async def check_nodes(self, within: float) -> None:
        """A model spanning nodes: every rank on every node answers within
        `within` seconds, or the engine counts as dead (`EngineDeadError`)."""
        ...

    def is_alive(self) -> bool: ...

    def death_report(self) -> EngineDeath:
        """Once `is_alive()` is False: which process died and why (may block briefly)."""
        ...

    async def shutdown(self) -> None: ...
