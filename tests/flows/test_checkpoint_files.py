"""Checkpoint files: fenced by the run's lease, and loaded without running code.

A writer that lost its lease (suspended past the TTL while another process resumed and finished the
run) must leave the files the new owner published as they are; a checkpoints row pointing at a
pickle that would run code must be refused without running it; a missing or damaged checkpoint is
one line naming the file and the way out.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import pickle
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sqlalchemy import update

from trace_rl.flows.checkpoints import CheckpointError, publish_directory, read_verified, write_atomic
from trace_rl.store.lease import RunLeaseError
from trace_rl.store.models import Run, utcnow
from trace_rl.store.store import RolloutStore
from trace_rl.store.writer import CheckpointRecord


class _Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _two_writers(tmp_path):
    """One run, its first writer (suspended later) and the process that takes it over."""
    url = f"sqlite:///{tmp_path / 'rollouts.db'}"
    first, second = RolloutStore(url), RolloutStore(url)
    run = first.open_run("r", {}, "h", "test")
    stale = first.take_lease(run, "r", ttl_s=60)
    stale._stop.set()  # SIGSTOP: its heartbeat stops too

    def take_over() -> None:
        """The first writer's lease runs out while it is stopped, and the second takes the run."""
        with first.engine.begin() as conn:
            conn.execute(update(Run).where(Run.id == run).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        second.take_lease(run, "r", ttl_s=60)

    return first, second, stale, take_over


def _save(tag: str):
    def save(folder: Path) -> None:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_text(f"weights of {tag}")
        (folder / "config.json").write_text("{}")

    return save


def test_a_writer_that_lost_its_lease_leaves_the_new_owners_policy_folder_as_it_is(tmp_path):
    first, second, stale, take_over = _two_writers(tmp_path)
    target = tmp_path / "runs" / "r" / "policy"
    try:
        publish_directory(_save("iteration 0"), target, stale.fence)

        def stopped_inside_checkpoint(folder: Path) -> None:
            _save("iteration 1 (stale)")(folder)  # computed iteration 1's export, then stopped
            take_over()
            publish_directory(_save("iteration 2"), target, second._lease.fence)  # the new owner finishes

        with pytest.raises(RunLeaseError) as refused:
            publish_directory(stopped_inside_checkpoint, target, stale.fence)
        assert len(str(refused.value).splitlines()) == 1 and "lost its lease" in str(refused.value)
        assert (target / "model.safetensors").read_text() == "weights of iteration 2"
        assert sorted(p.name for p in target.parent.iterdir()) == ["policy"]  # no temporary left behind
    finally:
        first.close()
        second.close()


def test_a_writer_that_lost_its_lease_leaves_the_new_owners_checkpoint_file_as_it_is(tmp_path):
    first, second, stale, take_over = _two_writers(tmp_path)
    path = tmp_path / "runs" / "r" / "checkpoints" / "policy-00001.pt"
    try:
        mine = {"weights": {"w": torch.ones(2)}, "version": 1}

        def stopped_before_publishing():
            """Stopped between computing the checkpoint and renaming it into place."""
            take_over()
            theirs_digest.append(
                write_atomic({"weights": {"w": torch.zeros(2)}, "version": 1}, path, second._lease.fence)
            )
            return stale.fence()

        theirs_digest: list[str] = []
        with pytest.raises(RunLeaseError, match="lost its lease"):
            write_atomic(mine, path, stopped_before_publishing)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == theirs_digest[0]
        assert torch.equal(read_verified(path, theirs_digest[0])["weights"]["w"], torch.zeros(2))
        assert sorted(p.name for p in path.parent.iterdir()) == ["policy-00001.pt"]
    finally:
        first.close()
        second.close()


def test_a_checkpoint_that_would_run_code_is_refused_naming_the_file_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran.txt"
    path = tmp_path / "runs" / "r" / "checkpoints" / "policy-00003.pt"
    path.parent.mkdir(parents=True)
    hostile = [_torch_bytes({"weights": _Payload(marker)}), pickle.dumps({"weights": _Payload(marker)}, protocol=2)]
    hostile.append(pickle.dumps({"weights": _Payload(marker)}))  # a protocol torch's loader does not read
    for i, data in enumerate(hostile):
        path.write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()  # whoever wrote the file also wrote its row
        with (
            pytest.warns(UserWarning) if i == 2 else contextlib.nullcontext(),
            pytest.raises(CheckpointError) as refused,
        ):
            read_verified(path, digest)
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and f"checkpoint {path} was not loaded" in message, message
        assert "could run code" in message and "trace-rl runs delete r --yes" in message
        assert i == 2 or "it holds exec, which is not a tensor" in message
        assert not marker.exists()
    # the payload is real: an unrestricted load would have run it
    torch.load(io.BytesIO(_torch_bytes({"weights": _Payload(marker)})), weights_only=False)
    assert marker.read_text() == "ran"


def test_a_checkpoints_row_naming_a_hostile_file_is_refused_when_the_run_restores(tmp_path):
    """The route of the report: a row of the checkpoints table points at a pickle; resuming the run
    restores from it."""
    from trace_rl.flows.context import restore_predictor_if_dirty

    marker = tmp_path / "ran.txt"
    path = tmp_path / "elsewhere.pt"
    path.write_bytes(_torch_bytes(_Payload(marker)))
    store = RolloutStore(f"sqlite:///{tmp_path / 'rollouts.db'}")
    try:
        run = store.open_run("r", {}, "h", "test")
        with store.stage(run, 0, "update_policy") as w:
            w.checkpoint(CheckpointRecord("predictor", str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
        ctx = SimpleNamespace(store=store, run_id=run, predictor_dirty=True, predictor=None)
        with pytest.raises(CheckpointError, match="was not loaded"):
            restore_predictor_if_dirty(ctx)
        assert not marker.exists()
    finally:
        store.close()


def test_a_missing_or_damaged_checkpoint_names_the_file_and_the_way_out(tmp_path):
    path = tmp_path / "runs" / "r" / "checkpoints" / "policy-00003.pt"
    digest = write_atomic({"weights": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()
    path.write_bytes(good[:-40] + bytes(40))  # damaged on disk
    truncated = good[: len(good) // 2]
    for expected, sha in (("is damaged (its sha256", digest), ("is damaged (", hashlib.sha256(truncated).hexdigest())):
        if sha != digest:
            path.write_bytes(truncated)  # damaged, and its row rewritten to match
        with pytest.raises(CheckpointError) as refused:
            read_verified(path, sha)
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and f"checkpoint {path} {expected}" in message, message
        assert "trace-rl runs delete r --yes" in message and sha[:12] in message
    path.unlink()
    with pytest.raises(CheckpointError, match=f"checkpoint {path} is missing: put back"):
        read_verified(path, digest)


def test_every_state_the_run_checkpoints_loads_without_pickled_objects(tmp_path):
    """The policy's (weights, AdamW state, random state) and the predictors' (numpy arrays and
    scalars) load with weights_only; an object that would not load is refused when written."""
    from trace_core.method.predictor import PredictorConfig, make_predictor

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    policy = {
        "weights": {k: v.detach().clone() for k, v in model.named_parameters()},
        "optimizer": optimizer.state_dict(),
        "version": 3,
        "torch_rng": torch.get_rng_state(),
    }
    digest = write_atomic(policy, tmp_path / "policy.pt")
    optimizer.load_state_dict(read_verified(tmp_path / "policy.pt", digest)["optimizer"])
    rng = np.random.default_rng(0)
    for name in ("online", "mlp"):
        predictor = make_predictor(name, 4, PredictorConfig(mixedness=True))
        for it in range(2):
            predictor.add(it, rng.normal(size=(30, 4)), rng.binomial(4, 0.4, size=30) / 4, np.full(30, 4.0))
            predictor.fit()
        state = predictor.state_dict()
        state["chosen"] = (np.float64(0.5), np.float64(1.0))
        digest = write_atomic(state, tmp_path / f"{name}.pt")
        again = make_predictor(name, 4, PredictorConfig(mixedness=True))
        again.load_state_dict(read_verified(tmp_path / f"{name}.pt", digest))
        x = rng.normal(size=(5, 4))
        assert np.allclose(again.predict(x), predictor.predict(x))
    with pytest.raises(CheckpointError, match="collections.deque"):
        from collections import deque

        write_atomic({"history": deque([1])}, tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
