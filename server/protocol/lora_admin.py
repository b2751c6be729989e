"""Loading and unloading LoRA adapters at run time (vLLM's request shapes)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from lemur.server.protocol.common import RequestModel, ResponseModel


class LoadLoraAdapterRequest(RequestModel):
    lora_name: str = Field(min_length=1, max_length=128)
    lora_path: str = Field(min_length=1, max_length=4096)


class UnloadLoraAdapterRequest(RequestModel):
    lora_name: str = Field(min_length=1, max_length=128)


class LoraAdapterResponse(ResponseModel):
    object: Literal["lora_adapter"] = "lora_adapter"
    name: str
    parent: str
    status: Literal["loaded", "unloaded"]
    rank: int
    load_seconds: float | None = None
