"""Checkpoint writes are atomic: a crash mid-write keeps the previous one as latest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lemur.training import checkpoint
from lemur.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


def test_crash_mid_write_keeps_previous_latest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = tmp_path / "checkpoints"
    save_checkpoint(ckpt, 1, {"step": 1, "w": torch.ones(3)}, keep=2)

    def crash(obj: object, f) -> None:
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, 2, {"step": 2}, keep=2)
    monkeypatch.undo()
    latest = latest_checkpoint(ckpt)
    assert latest is not None and latest.name == "step-00000001"
    assert load_checkpoint(latest)["step"] == 1
    # The next successful save moves `latest` on and clears the debris.
    save_checkpoint(ckpt, 3, {"step": 3}, keep=2)
    assert latest_checkpoint(ckpt).name == "step-00000003"
    assert not list(ckpt.glob(".tmp-*"))


def test_keeps_only_the_newest(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    for step in range(1, 5):
        save_checkpoint(ckpt, step, {"step": step}, keep=2)
    assert sorted(p.name for p in ckpt.glob("step-*")) == ["step-00000003", "step-00000004"]
