"""Atomic training checkpoints.

A checkpoint is written into a temporary directory, fsynced, renamed into
place, and only then does the `latest` pointer (itself replaced atomically)
name it. A crash at any point leaves the previous checkpoint as `latest`.

Two layouts: `state.pt` (one process, or state gathered on rank 0), or a
sharded checkpoint (training/sharded.py: every rank's shards, written with
torch.distributed.checkpoint, plus `meta.pt` with the step and schedule).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_path(ckpt_dir: Path, step: int, tag: str) -> Path:
    """Where the checkpoint of `step` is written before it is committed (`tag`: whose)."""
    return ckpt_dir / f".tmp-step-{step:08d}-{tag}"


def staging_dir(ckpt_dir: Path, step: int, tag: str) -> Path:
    """A fresh temporary directory at staging_path."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = staging_path(ckpt_dir, step, tag)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def write_synced(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def commit(ckpt_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Move a fully written checkpoint into place, then point `latest` at it."""
    final = ckpt_dir / f"step-{step:08d}"
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer_tmp = ckpt_dir / f".latest-{os.getpid()}"
    pointer_tmp.write_text(final.name + "\n")
    with open(pointer_tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(pointer_tmp, ckpt_dir / "latest")
    _fsync_dir(ckpt_dir)
    _prune(ckpt_dir, keep, final.name)
    return final


def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    tmp = staging_dir(ckpt_dir, step, str(os.getpid()))
    write_synced(tmp / "state.pt", state)
    return commit(ckpt_dir, tmp, step, keep)


def _prune(ckpt_dir: Path, keep: int, latest: str) -> None:
    steps = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)
    for tmp in ckpt_dir.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = ckpt_dir / "latest"
    if not pointer.exists():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "state.pt").exists() or is_sharded_checkpoint(path) else None


def is_sharded_checkpoint(path: Path) -> bool:
    return (path / "meta.pt").exists()


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The whole state (`state.pt`), or a sharded checkpoint's step, schedule and RNG (`meta.pt`)."""
    name = "meta.pt" if is_sharded_checkpoint(path) else "state.pt"
    return torch.load(path / name, map_location="cpu", weights_only=False)
