"""Exclusive run leases: one writer per run name, a crashed writer's lease expires.

A run's row holds `lease_owner` ("host:pid:token") and `lease_expires_at`. A process may write a
run only while it owns the lease:
- `acquire` takes the lease with one compare-and-swap UPDATE (it matches the owner it read), so two
  processes that race for it cannot both win, on SQLite or PostgreSQL. It succeeds when the lease is
  free, expired, already ours, or held by a process of this host that no longer exists (a `kill -9`
  on this machine frees the run at once; one on another host after `ttl_s`).
- a daemon thread renews it every `ttl_s / 3` seconds while the run works;
- every stage transaction calls `verify`, which locks the run's row (PostgreSQL `FOR UPDATE`; on
  SQLite the database's single writer lock does it) and fails if another process took the lease: a
  writer that lost its lease (suspended past the TTL, say) can never commit over its successor;
- files are fenced like rows: a stage writes its checkpoint and export files under temporary names
  and renames them into place inside `fence`, which renews the lease only if this process still
  holds it and keeps the run's row locked (PostgreSQL row lock; SQLite write lock) while the
  renames run; a writer that lost its lease leaves the published files as they are;
- `release` records how the run ended (`done`, `failed`, `interrupted`) and frees the lease.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from trace_rl.store.db import StoreError, transaction
from trace_rl.store.models import Run, utcnow


class RunLeaseError(StoreError):
    """Another process holds (or took over) the run's lease."""


def new_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _process_gone(owner: str) -> bool:
    """True when `owner` names a process of this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: another lease object of ours, still alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands timestamps back without a zone; they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's count; the ORM session types it as a plain Result)."""
    return int(cast(CursorResult[Any], result).rowcount)


def held_by_another(name: str, holder: str | None, expires: datetime | None, owner: str = "") -> str:
    """Why run `name` cannot be written now (its lease is held by a live process other than
    `owner`), or '' where it can."""
    free = holder is None or holder == owner or (expires is not None and expires < utcnow())
    if free or (holder is not None and _process_gone(holder)):
        return ""
    until = expires.strftime("%Y-%m-%d %H:%M:%S UTC") if expires else "?"
    return (
        f"run {name!r} is being written by {holder} (lease until {until}); "
        "wait for it to finish, stop it, or choose another run.name"
    )


class RunLease:
    """The exclusive right to write one run; see the module docstring."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, name: str, ttl_s: float) -> None:
        self.sessions, self.run_id, self.name, self.ttl_s = sessions, run_id, name, ttl_s
        self.owner = new_owner()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lease and mark the run `running`; raise RunLeaseError naming the holder."""
        with transaction(self.sessions) as s:
            holder, expires = s.execute(
                select(Run.lease_owner, Run.lease_expires_at).where(Run.id == self.run_id)
            ).one()
            refusal = held_by_another(self.name, holder, aware(expires), self.owner)
            if refusal:
                raise RunLeaseError(refusal)
            taken = _rowcount(
                s.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.lease_owner.is_not_distinct_from(holder))
                    .values(
                        lease_owner=self.owner, lease_expires_at=self._expiry(), status="running", updated_at=utcnow()
                    )
                )
            )
        if taken != 1:
            raise RunLeaseError(f"run {self.name!r} was taken by another process while starting; try again")
        self._thread = threading.Thread(target=self._heartbeat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.ttl_s)

    def renew(self) -> bool:
        """Extend the lease; False when another process owns it now."""
        with transaction(self.sessions) as s:
            renewed = _rowcount(
                s.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.lease_owner == self.owner)
                    .values(lease_expires_at=self._expiry())
                )
            )
        return renewed == 1

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.renew():
                    return  # taken over: `verify` stops this process's next commit
            except Exception:
                continue

    def verify(self, session: Session) -> None:
        """Inside a writing transaction: fail unless this process still owns the lease."""
        holder = session.scalar(select(Run.lease_owner).where(Run.id == self.run_id).with_for_update())
        if holder != self.owner:
            raise RunLeaseError(
                f"run {self.name!r} lost its lease to {holder or 'nobody'}; this process stops writing "
                "(another process resumed the run)"
            )

    @contextmanager
    def fence(self) -> Iterator[None]:
        """Publish files inside this block: it starts by renewing the lease where this process
        still owns it (a compare-and-swap UPDATE of the run's row, which holds the row's lock, or
        SQLite's write lock, until the block ends, so no other process can take the lease while
        files are renamed into place), else raises RunLeaseError before anything is published."""
        with transaction(self.sessions) as s:
            held = _rowcount(
                s.execute(
                    update(Run)
                    .where(Run.id == self.run_id, Run.lease_owner == self.owner)
                    .values(lease_expires_at=self._expiry())
                )
            )
            if held != 1:
                holder = s.scalar(select(Run.lease_owner).where(Run.id == self.run_id))
                raise RunLeaseError(
                    f"run {self.name!r} lost its lease to {holder or 'nobody'}; this process leaves the published "
                    "files as they are and stops writing (another process resumed the run)"
                )
            yield

    def release(self, status: str) -> None:
        """Record how the run ended and free the lease (a no-op where another process owns it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with transaction(self.sessions) as s:
            s.execute(
                update(Run)
                .where(Run.id == self.run_id, Run.lease_owner == self.owner)
                .values(lease_owner=None, lease_expires_at=None, status=status, updated_at=utcnow())
            )
