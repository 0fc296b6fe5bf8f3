"""Checkpoint files: written under a temporary name, published only while the run's lease is held,
loaded without running code.

- `write_atomic` writes a checkpoint (`torch.save`) to a temporary name beside its target, flushed,
  and renames it into place inside `fence` (`RolloutStore.fence`, the run's lease): a
  crash never leaves a torn file, and a writer that lost its lease (suspended past the TTL while
  another process resumed the run) leaves the published file as it is and fails in one line.
- `publish_directory` does the same for a folder (the export `runs/<name>/policy`).
- `read_verified` checks the sha256 the run recorded, then loads with `torch.load(weights_only=True)`
  (tensors, numpy arrays and plain data only): a checkpoint row pointing at a pickle that would
  run code is refused, naming the file; a missing or damaged file is refused with the way out.
Every checkpoint's sha256 goes to the store with the stage that wrote it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any

import torch

from trace_rl.store.db import StoreError

Fence = Callable[[], AbstractContextManager[object]]


class CheckpointError(StoreError):
    """A checkpoint file is missing, damaged, not what the run recorded, or holds more than data."""


def no_fence() -> AbstractContextManager[object]:
    return nullcontext()


def write_atomic(obj: Any, path: Path, fence: Fence = no_fence) -> str:
    """torch.save `obj` to `path`: to a temporary name, renamed into place inside `fence`; returns the
    file's sha256. Refuses (CheckpointError) an object that `read_verified` would not load."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    _require_loadable(data, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with tmp.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with fence():
            _sweep(path)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return hashlib.sha256(data).hexdigest()


def publish_directory(save: Callable[[Path], None], target: Path, fence: Fence = no_fence) -> str:
    """`save` a folder into a temporary folder beside `target`, then swap it in for `target` inside
    `fence`; returns its digest (`directory_digest`). The previous folder is renamed aside and then
    deleted: never anything outside `target`'s parent (a symlink at `target` is unlinked, not followed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(target)
    old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
    try:
        save(tmp)
        digest = directory_digest(tmp)
        with fence():
            _sweep(target)
            if target.is_symlink():
                target.unlink()
            elif target.exists():
                target.rename(old)
            tmp.rename(target)
    finally:
        for leftover in (tmp, old):
            _remove(leftover)
    return digest


def directory_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _temporary(path: Path) -> Path:
    """A name beside `path` that no other writer uses (two processes of one run never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.partial")


def _sweep(path: Path) -> None:
    """Inside the fence: delete what writers that crashed or lost the lease left beside `path`."""
    for pattern in (f".{path.name}.*.partial", f".{path.name}.*.old"):
        for leftover in path.parent.glob(pattern):
            if f".{os.getpid()}-" not in leftover.name:
                _remove(leftover)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


# -- loading ---------------------------------------------------------------------------------------


@cache
def _safe_globals() -> tuple[Any, ...]:
    """What a checkpoint may hold besides tensors and plain data: numpy arrays and scalars (the
    predictors' states), named as numpy pickles them."""
    import numpy as np

    reconstruct = np.zeros(1).__reduce__()[0]  # numpy.(_)core.multiarray._reconstruct
    scalar = np.float64(0).__reduce__()[0]  # numpy.(_)core.multiarray.scalar
    kinds: list[Any] = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
    kinds += [np.float16, np.float32, np.float64, np.complex64, np.complex128]
    return (reconstruct, scalar, np.ndarray, np.dtype, *(type(np.dtype(k)) for k in kinds))


def _require_loadable(data: bytes, path: Path) -> None:
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _safe_globals()}
    unsafe = sorted(set(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))) - allowed)
    if unsafe:
        raise CheckpointError(
            f"cannot write checkpoint {path}: it would hold {', '.join(unsafe)}, which loading refuses "
            "(checkpoints hold tensors, numpy arrays and plain data only)"
        )


def _way_out(path: Path, sha256: str) -> str:
    """How to recover a run whose latest checkpoint cannot be loaded."""
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    run = run_dir.name
    return (
        f"put back the file run {run!r} wrote (sha256 {sha256[:12]}..., e.g. from a backup), or train the run again "
        f"from the start (`trace-rl runs delete {run} --yes`, then the same `trace-rl run`)"
    )


def read_verified(path: Path, sha256: str) -> Any:
    """Load a checkpoint after checking its content hash, without running code: only tensors,
    numpy arrays and plain data load. Anything else is one CheckpointError naming the file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing: {_way_out(path, sha256)}") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} cannot be read ({err.strerror}): {_way_out(path, sha256)}") from None
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CheckpointError(
            f"checkpoint {path} is damaged (its sha256 is not the one the run recorded): {_way_out(path, sha256)}"
        )
    try:
        with torch.serialization.safe_globals(list(_safe_globals())):
            return torch.load(io.BytesIO(data), weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(err))
        what = (
            f"it holds {found.group(1)}, which is not a tensor, array or plain data"
            if found
            else f"it is not only tensors, arrays and plain data ({detail.group(1).strip() if detail else 'pickle'})"
        )
        raise CheckpointError(
            f"checkpoint {path} was not loaded: {what}; trace-rl never writes that, and unpickling it could run "
            f"code: check who can write the run's folder and its checkpoints rows, then {_way_out(path, sha256)}"
        ) from None
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is damaged ({reason}): {_way_out(path, sha256)}") from None
