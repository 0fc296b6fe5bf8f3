"""One writer per run: a second process is refused, a crashed one's lease frees, the end is recorded."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, timedelta

import pytest
from sqlalchemy import select, update

from tests.helpers import make_tree, save_trees
from trace_rl.store.lease import RunLeaseError
from trace_rl.store.models import Run, utcnow
from trace_rl.store.store import RolloutStore


def _run_row(store, run_id):
    with store.engine.connect() as conn:
        return conn.execute(select(Run.status, Run.lease_owner, Run.lease_expires_at).where(Run.id == run_id)).one()


def _set_lease(store, run_id, owner, seconds_from_now):
    with store.engine.begin() as conn:
        conn.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(lease_owner=owner, lease_expires_at=utcnow() + timedelta(seconds=seconds_from_now))
        )


def test_a_second_writer_is_refused_with_one_line_naming_the_holder(db_url):
    first, second = RolloutStore(db_url), RolloutStore(db_url)
    try:
        run = first.open_run("r", {}, "h", "test")
        lease = first.take_lease(run, "r", ttl_s=60)
        assert second.open_run("r", {}, "h", "test") == run
        with pytest.raises(RunLeaseError) as refused:
            second.take_lease(run, "r", ttl_s=60)
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and lease.owner in message and "'r'" in message
        assert _run_row(first, run).status == "running"
    finally:
        first.close()
        second.close()


def test_the_end_of_a_run_is_recorded_and_frees_the_lease(store):
    run = store.open_run("r", {}, "h", "test")
    store.take_lease(run, "r", ttl_s=60)
    store.release_lease("failed")
    assert tuple(_run_row(store, run)) == ("failed", None, None)
    store.take_lease(run, "r", ttl_s=60)  # free again: a restart resumes
    assert _run_row(store, run).status == "running"
    store.release_lease("done")
    assert _run_row(store, run).status == "done"


def test_a_killed_writer_on_this_host_frees_the_run_at_once(store):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = store.open_run("r", {}, "h", "test")
    _set_lease(store, run, f"{socket.gethostname()}:{dead.pid}:deadbeef", 600)
    store.take_lease(run, "r", ttl_s=60)
    assert _run_row(store, run).lease_owner != f"{socket.gethostname()}:{dead.pid}:deadbeef"


def test_a_lease_of_another_host_holds_until_it_expires(store):
    run = store.open_run("r", {}, "h", "test")
    _set_lease(store, run, "elsewhere:1:cafe", 600)
    with pytest.raises(RunLeaseError, match="elsewhere:1:cafe"):
        store.take_lease(run, "r", ttl_s=60)
    _set_lease(store, run, "elsewhere:1:cafe", -1)  # its heartbeat stopped a while ago
    store.take_lease(run, "r", ttl_s=60)


def test_a_writer_that_lost_its_lease_commits_nothing(db_url):
    first, second = RolloutStore(db_url), RolloutStore(db_url)
    try:
        run = first.open_run("r", {}, "h", "test")
        first.take_lease(run, "r", ttl_s=60)
        first._lease._stop.set()  # its heartbeat stalls (a suspended process), and the lease runs out
        _set_lease(first, run, first._lease.owner, -1)
        second.take_lease(run, "r", ttl_s=60)
        with pytest.raises(RunLeaseError, match="lost its lease"):
            save_trees(first, run, 0, [make_tree("q1", [1.0, 0.0])], stage="roll_out_roots")
        assert first.completed_stages(run, 0) == set() and first.load_trees(run, 0) == []
        save_trees(second, run, 0, [make_tree("q1", [1.0, 0.0])], stage="roll_out_roots")
        assert second.completed_stages(run, 0) == {"roll_out_roots"}
    finally:
        first.close()
        second.close()


def test_the_heartbeat_keeps_renewing_the_lease(store):
    run = store.open_run("r", {}, "h", "test")
    lease = store.take_lease(run, "r", ttl_s=60)
    first_expiry = _run_row(store, run).lease_expires_at
    assert lease.renew()
    assert _run_row(store, run).lease_expires_at >= first_expiry


def test_the_file_fence_renews_a_held_lease_and_refuses_a_lost_one(db_url):
    """Files are published inside `RunLease.fence`: a writer suspended past its TTL while another
    process took the run gets one line and publishes nothing; the holder's fence extends its lease."""
    first, second = RolloutStore(db_url), RolloutStore(db_url)
    try:
        run = first.open_run("r", {}, "h", "test")
        lease = first.take_lease(run, "r", ttl_s=60)
        lease._stop.set()  # no heartbeat: only the fence renews
        _set_lease(first, run, lease.owner, 5)
        published = []
        with lease.fence():
            published.append("first")
        expires = _run_row(first, run).lease_expires_at
        assert (expires if expires.tzinfo else expires.replace(tzinfo=UTC)) > utcnow() + timedelta(seconds=30)
        _set_lease(first, run, lease.owner, -1)  # suspended past its TTL...
        taken = second.take_lease(run, "r", ttl_s=60)  # ...while another process resumed the run
        with pytest.raises(RunLeaseError) as refused, lease.fence():
            published.append("stale")
        message = str(refused.value)
        assert len(message.splitlines()) == 1 and taken.owner in message and "leaves the published files" in message
        assert published == ["first"] and _run_row(first, run).lease_owner == taken.owner
    finally:
        first.close()
        second.close()
