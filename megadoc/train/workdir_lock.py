"""One training job per workdir: `<workdir>/LOCK` names its owner (host, pid, start) and is
refreshed by a heartbeat, so a second job on the same workdir refuses to start instead of
interleaving checkpoints and metrics with the first.

A lock is stale, and is taken over with a message, when its owner is a dead process on this
host, or when its heartbeat is older than STALE_AFTER_S (an owner on another host, or a bucket
shared across machines, that died without cleaning up). Creation is exclusive (O_EXCL locally,
an if-generation-match=0 upload on gs://), so of two jobs starting together exactly one wins.

A takeover is a compare-and-swap on the lock's content: the job that exclusively creates
`LOCK.takeover-<hash of the stale content>` (the same exclusive create) may replace that
content, and does so only if the lock still holds it. So of two jobs taking over one dead
job's lock, exactly one wins, and neither ever deletes a lock the other just made.
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
            held = _read(self.path)
            if not held or held.get("token") != self.owner["token"]:
                return  # taken over: the new owner's lock is left alone
            self.owner["heartbeat"] = time.time()
            with contextlib.suppress(OSError):  # a missed beat is no reason to stop training
                fs.write_text(self.path, json.dumps(self.owner))


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
        if _take_over(path, raw, mine):
            print(f"[train] {path}: took over the stale lock of process {held.get('pid')} on "
                  f"{held.get('host')} ({reason})", flush=True)
            return owner
    raise WorkdirBusyError(f"{path}: another job took the workdir's lock while this one started")


def _take_over(path: str, stale: bytes, mine: bytes) -> bool:
    """Replaces the lock's content `stale` by `mine` if no other job does (compare-and-swap):
    the right to replace one content is the exclusive creation of a token named after it."""
    token = f"{path}.takeover-{hashlib.sha256(stale).hexdigest()[:16]}"
    if not fs.create_exclusive(token, mine):
        return False  # another job is taking over (or took over) this very lock
    try:
        if _read_raw(path) != stale:  # changed since it was read: not ours to replace
            return False
        fs.write_bytes(path, mine)
        return True
    finally:
        fs.remove(token)  # whoever creates it later reads the lock after this replacement


def release(workdir: str, owner: dict) -> None:
    path = fs.join(workdir, NAME)
    if (_read(path) or {}).get("token") == owner["token"]:
        with contextlib.suppress(FileNotFoundError):
            fs.remove(path)


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
