"""Raw documents for pretraining: the user's files, a Hugging Face dataset, or
the built-in demo corpus (the standard library's source and pydoc topics)."""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lemur.training.config import DataConfig

Kind = Literal["code", "text"]
TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class Document:
    kind: Kind
    text: str
    source: str


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_python_files() -> list[Path]:
    """The standard library's own sources (tests left out), in a stable order."""
    root = stdlib_root()
    files = [p for p in root.rglob("*.py") if not ({"test", "tests", "idle_test", "site-packages"} & set(p.parts))]
    return sorted(files)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def demo_documents() -> Iterator[Document]:
    """Code: every stdlib module. Text: Python's own prose (pydoc topics)."""
    root = stdlib_root()
    for path in stdlib_python_files():
        text = _read(path)
        if text:
            yield Document("code", text, str(path.relative_to(root)))
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield Document("text", topics[name], f"pydoc:{name}")


def _files(paths: tuple[str, ...], suffixes: tuple[str, ...] | None) -> Iterator[Path]:
    for p in paths:
        path = Path(p)
        if path.is_dir():
            yield from sorted(f for f in path.rglob("*") if f.is_file() and (suffixes is None or f.suffix in suffixes))
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"data path {p} does not exist")


def _jsonl(path: Path, field: str) -> Iterator[Document]:
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if field not in row:
                raise ValueError(f"{path}:{line_no}: no {field!r} field")
            kind = row.get("kind", "text")
            yield Document("code" if kind == "code" else "text", row[field], f"{path}:{line_no}")


def _hf_dataset(name: str, field: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError as exc:
        raise SystemExit("data.dataset needs the `hf` extra: pip install 'lemur-serve[hf]'") from exc
    for i, row in enumerate(datasets.load_dataset(name, split="train", streaming=True)):
        kind = row.get("kind", "text")
        yield Document("code" if kind == "code" else "text", row[field], f"{name}:{i}")


def iter_documents(cfg: DataConfig) -> Iterator[Document]:
    """Every configured source, in a fixed order (mixing and shuffling come later)."""
    if cfg.demo:
        yield from demo_documents()
    for path in _files(cfg.code_paths, cfg.code_extensions):
        if (text := _read(path)) is not None:
            yield Document("code", text, str(path))
    for path in _files(cfg.text_paths, TEXT_SUFFIXES):
        if (text := _read(path)) is not None:
            yield Document("text", text, str(path))
    for path in _files(cfg.jsonl_paths, (".jsonl",)):
        yield from _jsonl(path, cfg.dataset_text_field)
    if cfg.dataset:
        yield from _hf_dataset(cfg.dataset, cfg.dataset_text_field)
