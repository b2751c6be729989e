"""The engine boundary: token ids + sampling parameters in, output deltas out."""

from server.engine.base import (
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
