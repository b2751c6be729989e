"""The engine boundary: token ids + sampling parameters in, output deltas out."""

from lemur.server.engine.base import (
    AdapterRef,
    Engine,
    EngineDeadError,
    EngineOutput,
    EngineRejectedRequest,
    EngineRequest,
    ModelInfo,
    SamplingSpec,
    StructuredSpec,
    TokenLogprob,
)

__all__ = [
    "AdapterRef",
    "Engine",
    "EngineDeadError",
    "EngineOutput",
    "EngineRejectedRequest",
    "EngineRequest",
    "ModelInfo",
    "SamplingSpec",
    "StructuredSpec",
    "TokenLogprob",
]
