"""One training job per workdir: `<workdir>/LOCK` names its owner (host, pid, start) and is
refreshed by a heartbeat, so a second job on the same workdir refuses to start instead of
interleaving checkpoints and metrics with the first.

A lock is stale, and is taken over with a message, when its owner is a dead process on this
host, or when its heartbeat is older than STALE_AFTER_S (an owner on another host, or a bucket
shared across machines, that died without cleaning up). Creation is exclusive (O_EXCL locally,
an if-generation-match=0 upload on gs://), so of two jobs starting together exactly one wins.

Every later change of the lock (a takeover, a heartbeat, the release) is a compare-and-swap on
its content: the job that exclusively creates `LOCK.swap-<hash of the content it read>` (the
same exclusive create) may replace that content, and does so only if the lock still holds it.
So of two jobs taking over one dead job's lock exactly one wins, and no job ever overwrites or
deletes a lock another one just made.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from typing import Iterator

from megadoc import fs

NAME = "LOCK"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 600.0  # ten missed heartbeats


class WorkdirBusyError(FileExistsError):
    """Another live job holds the workdir."""


def _owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
            "started": time.time(), "heartbeat": time.time()}


def _read(path: str) -> dict | None:
    """The lock's owner; None when there is no lock; {} when it is unreadable (torn)."""
    raw = _read_raw(path)
    return None if raw is None else _parse(raw)


def _read_raw(path: str) -> bytes | None:
    try:
        return fs.read_bytes(path)
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict:
    try:
        held = json.loads(raw)
    except ValueError:  # torn, or not UTF-8
        return {}
    return held if isinstance(held, dict) else {}


def _stale_reason(held: dict) -> str | None:
    if not held:
        return "its lock file is unreadable"
    if held.get("host") == socket.gethostname():
        try:
            os.kill(int(held["pid"]), 0)
        except ProcessLookupError:
            return f"process {held['pid']} on this host is gone"
        except PermissionError:
            pass  # alive, another user's
    age = time.time() - float(held.get("heartbeat", 0))
    if age > STALE_AFTER_S:
        return f"its heartbeat is {age:.0f} s old"
    return None


class _Heartbeat(threading.Thread):
    def __init__(self, path: str, owner: dict):
        super().__init__(daemon=True, name="workdir-lock-heartbeat")
        self.path, self.owner, self.stopped = path, owner, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):  # a missed beat is no reason to stop training
                raw = _read_raw(self.path)
                if raw is None or _parse(raw).get("token") != self.owner["token"]:
                    return  # taken over: the new owner's lock is left alone
                self.owner["heartbeat"] = time.time()
                _swap(self.path, raw, json.dumps(self.owner).encode())


def acquire(workdir: str) -> dict:
    """Takes the workdir's lock (taking over a stale one) or raises WorkdirBusyError naming the
    owner; returns this job's owner record."""
    path = fs.join(workdir, NAME)
    owner = _owner()
    mine = json.dumps(owner).encode()
    for _ in range(2):
        if fs.create_exclusive(path, mine):
            if (_read(path) or {}).get("token") == owner["token"]:
                return owner
        raw = _read_raw(path)
        if raw is None:
            continue  # released meanwhile
        held = _parse(raw)
        reason = _stale_reason(held)
        if reason is None:
            raise WorkdirBusyError(
                f"{workdir}: in use by process {held.get('pid')} on host {held.get('host')} "
                f"(started {time.ctime(held.get('started', 0))}, last heartbeat "
                f"{time.time() - held.get('heartbeat', 0):.0f} s ago); two jobs on one workdir "
                f"would corrupt it. Use another --workdir, or wait for that job to end "
                f"(a lock of a dead job is taken over after {STALE_AFTER_S:.0f} s)")
        if _swap(path, raw, mine):
            print(f"[train] {path}: took over the stale lock of process {held.get('pid')} on "
                  f"{held.get('host')} ({reason})", flush=True)
            return owner
        if _read_raw(path) == raw and fs.exists(_swap_token(path, raw)):
            raise WorkdirBusyError(
                f"{path}: another job is taking over this stale lock ({_swap_token(path, raw)} "
                f"exists); if no other job is starting, that one died midway: remove that file")
    raise WorkdirBusyError(f"{path}: another job took the workdir's lock while this one started")


def _swap_token(path: str, content: bytes) -> str:
    return f"{path}.swap-{hashlib.sha256(content).hexdigest()[:16]}"


def _swap(path: str, expected: bytes, new: bytes | None) -> bool:
    """Compare-and-swap: replaces the lock's content `expected` by `new` (None: removes the
    lock) unless it changed or another job is changing it; the right to change one content is
    the exclusive creation of a token named after it."""
    token = _swap_token(path, expected)
    if not fs.create_exclusive(token, new or b""):
        return False  # another job is changing this very content
    try:
        if _read_raw(path) != expected:  # changed since it was read: not ours to replace
            return False
        if new is None:
            fs.remove(path)
        else:
            fs.write_bytes(path, new)
        return True
    finally:
        fs.remove(token)  # whoever creates it later reads the lock after this change


def release(workdir: str, owner: dict) -> None:
    path = fs.join(workdir, NAME)
    raw = _read_raw(path)
    if raw is not None and _parse(raw).get("token") == owner["token"]:
        _swap(path, raw, None)


@contextlib.contextmanager
def held(workdir: str, enabled: bool = True) -> Iterator[None]:
    """The workdir's lock for the duration of the block, refreshed by a heartbeat thread
    (`enabled=False`: processes other than 0 of a multi-host job, which process 0 covers)."""
    if not enabled:
        yield
        return
    owner = acquire(workdir)
    beat = _Heartbeat(fs.join(workdir, NAME), owner)
    beat.start()
    try:
        yield
    finally:
        beat.stopped.set()
        beat.join()  # a beat in flight must not rewrite the lock after its release
        release(workdir, owner)
