"""LoRA adapters served beside the base model, chosen by a request's `model`.

An adapter is a PEFT directory: adapter_config.json and
adapter_model.safetensors (what `lemur train sft --lora` writes, and what
peft's `save_pretrained` writes for any Lemur-format base). vLLM would load a
bad one deep inside a worker, and some mistakes it would not notice at all,
so the gateway reads the two files first (the JSON and the safetensors
header, never the weights) and refuses, with a 400 that says why:
- a path that does not exist, or lacks either file;
- a config that is not LoRA, or asks for what vLLM cannot serve (DoRA,
  trained biases, extra modules), or a rank above --max-lora-rank;
- a corrupt safetensors file (its header does not parse, or the file is
  shorter than the header promises);
- tensors that do not fit this base: another architecture, other sizes, or
  more layers. An adapter made for another base fails here, by its shapes.

The registry is the gateway's list of adapters: names, the engine's numeric
ids (never reused, so the engine cannot confuse a reloaded adapter with its
old weights), and ranks. Only names go to logs and metrics.

The engine is handed a private copy of the two files, made before they are
checked: vLLM keeps only --max-cpu-loras adapters in memory and reloads an
evicted one from its path when a request asks for it, and a folder deleted
or rewritten since would crash its worker. The copy is exactly what was
checked, and nobody else writes to it.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lemur.server.engine.base import AdapterRef, BaseShapes, LoraLimits
from lemur.server.errors import InvalidRequest, ModelNotFound

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_TENSOR = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")
_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_MAX_DIM = 2**40  # larger than any real dimension or byte offset, small enough to multiply safely


class AdapterError(InvalidRequest):
    """An adapter the gateway will not hand to the engine."""

    code = "invalid_adapter"


@dataclass(frozen=True)
class Adapter:
    ref: AdapterRef  # its path is the gateway's private copy
    rank: int
    base: str  # base_model_name_or_path as the adapter records it (informational)
    source: str  # the folder it was loaded from

    @property
    def name(self) -> str:
        return self.ref.name


def _projection_dims(shapes: BaseShapes) -> dict[str, tuple[int, int]]:
    """(in, out) features of each Llama projection of this base."""
    q, kv = shapes.num_heads * shapes.head_dim, shapes.num_kv_heads * shapes.head_dim
    h, i = shapes.hidden_size, shapes.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}  # fmt: skip


def _read_config(path: Path, max_rank: int) -> dict:
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{CONFIG_FILE} of {path} cannot be read: {exc}", param="lora_path") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} is not a LoRA adapter (peft_type is not LORA)", param="lora_path")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"{CONFIG_FILE} of {path} has no valid rank r", param="lora_path")
    if rank > max_rank or any(r > max_rank for r in (config.get("rank_pattern") or {}).values()):
        raise AdapterError(f"adapter rank {rank} exceeds this server's --max-lora-rank {max_rank}", param="lora_path")
    unsupported = [k for k in ("use_dora", "modules_to_save") if config.get(k)]
    if config.get("bias", "none") != "none":
        unsupported.append(f"bias={config['bias']}")
    if unsupported:
        raise AdapterError(f"{path} uses {', '.join(unsupported)}, which vLLM does not serve", param="lora_path")
    return config


def read_safetensors_header(file: Path) -> dict[str, dict]:
    """The tensor table of a safetensors file, checked against the file's size."""
    try:
        with file.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8).ljust(8, b"\xff"))
            if length > _MAX_HEADER:
                raise ValueError("header length is out of range")
            header = json.loads(f.read(length))
            size = f.seek(0, 2) - 8 - length
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise AdapterError(f"{file} is not a valid safetensors file: {exc}", param="lora_path") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{file} is not a valid safetensors file", param="lora_path")
    header.pop("__metadata__", None)
    for name, t in header.items():
        if not _entry_fits(t, size):
            raise AdapterError(f"{file} is corrupt or truncated (tensor {name[:100]!r})", param="lora_path")
    return header


def _small_ints(values: object, count: int | None = None) -> bool:
    """A list of `count` (or up to 8) ints in [0, 2**40): checked before any
    arithmetic, as `math.prod([10**15, "x"])` would build a 10**15-char string."""
    return (
        isinstance(values, list)
        and len(values) == (count if count is not None else len(values)) <= 8
        and all(type(v) is int and 0 <= v < _MAX_DIM for v in values)
    )


def _entry_fits(t: object, size: int) -> bool:
    """One tensor entry of the header: a known dtype, a sane shape, and data
    offsets inside the file that hold exactly that many bytes."""
    if not isinstance(t, dict) or t.get("dtype") not in _ITEMSIZE:
        return False
    shape, offsets = t.get("shape"), t.get("data_offsets")
    if not _small_ints(shape) or not _small_ints(offsets, 2):
        return False
    begin, end = offsets
    return end - begin == math.prod(shape) * _ITEMSIZE[t["dtype"]] and end <= size


def _check_tensors(header: dict[str, dict], shapes: BaseShapes, max_rank: int, path: Path) -> int:
    """The adapter's rank, once every tensor fits this base."""
    dims = _projection_dims(shapes)
    ranks: set[int] = set()
    for name, t in header.items():
        m = _TENSOR.search(name)
        if m is None or m.group(2) not in dims:
            raise AdapterError(
                f"{path}: tensor {name} is not a LoRA weight of an attention or MLP projection", param="lora_path"
            )
        layer, proj, side = int(m.group(1)), m.group(2), m.group(3)
        fan_in, fan_out = dims[proj]
        shape = t["shape"]
        rank = shape[0] if side == "A" else shape[1] if len(shape) == 2 else -1
        fits = len(shape) == 2 and (shape[1] == fan_in if side == "A" else shape[0] == fan_out)
        if layer >= shapes.num_layers or not fits:
            raise AdapterError(
                f"{path} was made for a different base model: {name} has shape {shape}, this base's "
                f"{proj} is {fan_in} -> {fan_out} in {shapes.num_layers} layers",
                param="lora_path",
            )
        ranks.add(rank)
    if not ranks:
        raise AdapterError(f"{path} holds no LoRA weights", param="lora_path")
    if max(ranks) > max_rank:
        message = f"adapter rank {max(ranks)} exceeds this server's --max-lora-rank {max_rank}"
        raise AdapterError(message, param="lora_path")
    return max(ranks)


def require_files(path: Path) -> None:
    if not path.is_dir():
        raise AdapterError(f"adapter path {path} does not exist or is not a directory", param="lora_path")
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / file).is_file():
            raise AdapterError(f"{path} has no {file}: not a PEFT LoRA adapter directory", param="lora_path")


def inspect_adapter(path: Path, shapes: BaseShapes, max_rank: int, shown: Path | None = None) -> tuple[int, str]:
    """(rank, recorded base) of the adapter at `path`, or AdapterError (whose
    message names `shown` in place of `path`: the user's folder, not our copy)."""
    try:
        require_files(path)
        config = _read_config(path, max_rank)
        rank = _check_tensors(read_safetensors_header(path / WEIGHTS_FILE), shapes, max_rank, path)
    except AdapterError as exc:
        if shown is not None:
            exc.message = exc.message.replace(str(path), str(shown))
        raise
    except (TypeError, ValueError, IndexError, KeyError, AttributeError, RecursionError) as exc:
        # Fields of the wrong type (a rank_pattern list, a target_modules number).
        message = f"{shown or path}: malformed adapter files ({type(exc).__name__}: {exc})"
        raise AdapterError(message, param="lora_path") from None
    return rank, str(config.get("base_model_name_or_path") or "")


class AdapterRegistry:
    """The adapters a server offers, by name. Runs on the event loop (loads
    and unloads hold the service's lock); reads are plain dict lookups."""

    def __init__(self, base_names: tuple[str, ...], shapes: BaseShapes | None, limits: LoraLimits | None) -> None:
        self.base_names = base_names
        self.shapes = shapes
        self.limits = limits
        self._adapters: dict[str, Adapter] = {}
        self._next_id = 1
        self._users: dict[int, int] = {}  # engine requests running with each adapter, by id
        self._unused: dict[int, asyncio.Event] = {}  # set when an unloaded adapter's last request ends
        self._store: Path | None = None  # the private copies, one folder per engine id

    @property
    def enabled(self) -> bool:
        return self.limits is not None and self.shapes is not None

    def check(self, name: str, path: str) -> Adapter:
        """A new adapter for `name` at `path`: copied, the copy inspected
        (blocking file work: run it off the event loop), not registered."""
        if not self.enabled:
            raise AdapterError("this server was started without LoRA support (--enable-lora)", param="lora_path")
        assert self.limits is not None and self.shapes is not None
        if not _NAME.fullmatch(name):  # fullmatch: "$" would let a trailing newline through
            raise AdapterError(f"adapter name {name[:130]!r} is not a valid model name", param="lora_name")
        if name in self.base_names or name in self._adapters:
            raise AdapterError(f"the model name {name!r} is already served", param="lora_name", code="adapter_exists")
        source = Path(path).resolve()
        require_files(source)
        int_id = self._next_id
        self._next_id += 1  # taken even if the engine then fails to load it: never reused
        copy = self._copy(source, int_id)
        try:
            rank, base = inspect_adapter(copy, self.shapes, self.limits.max_rank, shown=source)
        except AdapterError:
            shutil.rmtree(copy, ignore_errors=True)
            raise
        return Adapter(AdapterRef(name, int_id, str(copy)), rank, base, str(source))

    def _copy(self, source: Path, int_id: int) -> Path:
        if self._store is None:
            self._store = Path(tempfile.mkdtemp(prefix="lemur-adapters-"))  # mode 0700
        copy = self._store / str(int_id)
        copy.mkdir()
        try:
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                shutil.copyfile(source / file, copy / file)
        except OSError as exc:
            shutil.rmtree(copy, ignore_errors=True)
            raise AdapterError(f"{source} cannot be read: {exc.strerror}", param="lora_path") from None
        return copy

    def discard(self, adapter: Adapter) -> None:
        """Delete the private copy of an adapter the engine no longer has (or never took)."""
        if self._store is not None and Path(adapter.ref.path).parent == self._store:
            shutil.rmtree(adapter.ref.path, ignore_errors=True)

    def close(self) -> None:
        if self._store is not None:
            shutil.rmtree(self._store, ignore_errors=True)
            self._store = None

    def register(self, adapter: Adapter) -> None:
        if adapter.name in self._adapters:
            message = f"the model name {adapter.name!r} is already served"
            raise AdapterError(message, param="lora_name", code="adapter_exists")
        self._adapters[adapter.name] = adapter

    def acquire(self, ref: AdapterRef) -> None:
        """An engine request starts with this adapter: 404 if it was unloaded
        since the request was prepared (it may have waited for admission)."""
        current = self._adapters.get(ref.name)
        if current is None or current.ref.int_id != ref.int_id:
            raise ModelNotFound(f"the adapter `{ref.name}` was unloaded", param="model")
        self._users[ref.int_id] = self._users.get(ref.int_id, 0) + 1

    def release(self, ref: AdapterRef) -> None:
        left = self._users.get(ref.int_id, 1) - 1
        if left > 0:
            self._users[ref.int_id] = left
            return
        self._users.pop(ref.int_id, None)
        if (event := self._unused.pop(ref.int_id, None)) is not None:
            event.set()

    async def wait_unused(self, ref: AdapterRef) -> None:
        """Until no engine request runs with `ref` (callers bound it with asyncio.timeout)."""
        if self._users.get(ref.int_id):
            await self._unused.setdefault(ref.int_id, asyncio.Event()).wait()

    def remove(self, name: str) -> Adapter:
        adapter = self._adapters.pop(name, None)
        if adapter is None:
            raise ModelNotFound(f"no adapter named {name!r} is loaded", param="lora_name")
        return adapter

    def get(self, name: str) -> Adapter | None:
        return self._adapters.get(name)

    def all(self) -> list[Adapter]:
        return list(self._adapters.values())
