"""Atomic checkpoint files: written to a temporary name, flushed, then renamed into place.

A crash never leaves a torn checkpoint: the final name either holds a complete file or the
previous one. Every checkpoint's sha256 goes to the store with the stage that wrote it, and loading
checks it, so a file that does not match what the run recorded is refused.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from trace_core.atomic import write_bytes_atomic


class CheckpointError(RuntimeError):
    """A checkpoint file is missing or does not match the hash the run recorded."""


def write_atomic(obj: Any, path: Path) -> str:
    """torch.save `obj` to `path` atomically; returns the file's sha256."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, sha256: str) -> Any:
    """Load a checkpoint after checking its content hash."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} is missing")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(f"checkpoint {path} does not match the sha256 the run recorded")
    return torch.load(io.BytesIO(data), weights_only=False)
