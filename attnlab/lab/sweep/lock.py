"""An exclusive, inspectable lock file for a store: one writer (e.g. a sweep) at a time.

The lock is a small JSON file (pid, host, process start time, command, time) created with
``O_CREAT | O_EXCL``, so two processes can never both hold it. A lock left behind by a process
that died (same host, pid gone or reused by another process) is stale and is taken over; a
lock held by a live process, or by a process on another host (whose liveness cannot be
checked from here), is refused with a message saying who holds it and how to clear it.

* :class:`StoreLock` - ``with StoreLock(store): ...`` holds ``<store>/sweep.lock``
* :func:`locked` - the same as a context manager function
* :class:`StoreLockedError` - another live process holds the store's lock
* :func:`pid_alive` - whether a pid runs on this host (and is the same process)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnlab.core.store import StoreError

LOCK_NAME = "sweep.lock"
# a take-over in progress older than this was left by a process that died while taking over
_TAKEOVER_STALE_S = 30.0


class StoreLockedError(StoreError):
    """The store is being written by another process (it holds the store's lock)."""


def _start_time(pid: int) -> float | None:
    """The start time of process ``pid`` (None: no such process; -1: alive, time unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        import psutil

        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None  # exited, not yet reaped by its parent
        return proc.create_time()
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return -1.0
    except Exception:  # NoSuchProcess (exited just now) or AccessDenied
        return None if not _exists(pid) else -1.0


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether process ``pid`` runs on this host (and, given ``started``, is that same process)."""
    now = _start_time(pid)
    if now is None:
        return False
    if started is None or now < 0:
        return True
    return abs(now - started) < 1.0  # a different start time: the pid was reused


class StoreLock:
    """``with StoreLock(store): ...`` holds ``<store>/sweep.lock`` for the block.

    ``purpose`` is written into the lock for the message other processes see.
    """

    def __init__(self, store: str | os.PathLike, purpose: str = "attnlab sweep"):
        self.store = Path(store)
        self.path = self.store / LOCK_NAME
        self.purpose = purpose
        self.token = secrets.token_hex(8)
        self.held = False

    # ---- the lock file ------------------------------------------------------------------
    def _record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "pid": pid,
            "host": socket.gethostname(),
            "started": _start_time(pid),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "purpose": self.purpose,
            "command": " ".join(sys.argv)[:500],
            "token": self.token,
        }

    def read(self) -> dict[str, Any] | None:
        """The current holder's record (None if unlocked); ``{}`` if the file is unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            info = json.loads(text)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def is_stale(self, info: dict[str, Any]) -> bool:
        """A lock whose process is gone: same host and the pid is dead (or reused)."""
        if not info or info.get("host") != socket.gethostname():
            return False
        try:
            pid = int(info["pid"])
        except (KeyError, TypeError, ValueError):
            return False
        return not pid_alive(pid, info.get("started"))

    def _describe(self, info: dict[str, Any]) -> str:
        if not info:
            return (
                f"{self.store} is locked by {self.path}, which cannot be read; if no other "
                f"process is writing to this store, delete {self.path} and try again"
            )
        return (
            f"{self.store} is in use by another {info.get('purpose', 'process')} (pid "
            f"{info.get('pid')} on host {info.get('host')}, since {info.get('since')}: "
            f"{info.get('command', '?')!s}). Wait for it to finish; if that process is gone, "
            f"delete {self.path}"
        )

    def _take_over(self, info: dict[str, Any]) -> None:
        """Remove a stale lock; a ``.takeover`` mutex keeps two rescuers from racing."""
        mutex = self.path.with_name(self.path.name + ".takeover")
        try:
            fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                if time.time() - mutex.stat().st_mtime > _TAKEOVER_STALE_S:
                    mutex.unlink()
            return
        try:
            os.close(fd)
            if self.read() == info:  # still the same stale lock, not a fresh one
                self.path.unlink()
                warnings.warn(
                    f"took over a stale lock on {self.store}: pid {info.get('pid')} on "
                    f"{info.get('host')} is gone ({info.get('command', '?')})",
                    stacklevel=4,
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                mutex.unlink()

    def check(self) -> None:
        """Raise :class:`StoreLockedError` if a live holder has the lock (takes nothing)."""
        info = self.read()
        if info is not None and not self.is_stale(info):
            raise StoreLockedError(self._describe(info))

    # ---- acquire / release --------------------------------------------------------------
    def acquire(self) -> StoreLock:
        """Take the lock or raise :class:`StoreLockedError` (taking over stale locks)."""
        if not self.store.is_dir():
            raise StoreError(f"no store at {self.store} to lock")
        for attempt in range(20):
            if self._try_create():
                self.held = True
                return self
            info = self.read()
            if info is None:
                continue  # released in between: try again
            if info == {} and attempt < 5:
                time.sleep(0.1)  # being written right now
                continue
            if self.is_stale(info):
                self._take_over(info)
                continue
            raise StoreLockedError(self._describe(info))
        raise StoreLockedError(self._describe(self.read() or {}))

    def release(self) -> None:
        """Remove the lock file if this object holds it (never someone else's)."""
        if not self.held:
            return
        self.held = False
        info = self.read()
        if info and info.get("token") == self.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(store: str | os.PathLike, purpose: str = "attnlab sweep") -> Iterator[StoreLock]:
    """Hold the store's lock for the block (see :class:`StoreLock`)."""
    lock = StoreLock(store, purpose)
    with lock:
        yield lock
