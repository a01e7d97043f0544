"""gs://bucket/key objects through google-cloud-storage: retries, clear errors, streaming reads.

`megadoc.fs` dispatches here for gs:// paths; nothing else should need this module.

Every operation runs under `retrying`: transient failures (HTTP 408/429/5xx, refused or reset
connections, truncated bodies, checksum mismatches) are retried with exponential backoff and full
jitter, for at most `RETRY.deadline_s` in total; the client's own retries are switched off
(`retry=None`) so there is exactly one retry loop with one bound. Permanent failures raise at once:
a missing object `FileNotFoundError` (as a local path would), a missing bucket, a permission
denial or any other refusal `StorageError`, always naming the gs:// path.

`STORAGE_EMULATOR_HOST` (set by tests) points the client at a local server, anonymously.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import http.client
import io
import logging
import os
import random
import threading
import time
from typing import Callable, TypeVar

import fsspec.config
import requests
import urllib3
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud import storage
from google.cloud.storage import exceptions as storage_exceptions

PREFIX = "gs://"
READ_CHUNK_BYTES = 8 << 20  # one ranged GET per 8 MiB when streaming
DELETE_THREADS = 8  # under the HTTP session pool size (10), which warns beyond it

log = logging.getLogger(__name__)
T = TypeVar("T")

# orbax reaches gs:// through etils.epath -> fsspec -> gcsfs, whose directory-listing cache never
# expires: a process would not see checkpoints that another process (the trainer) wrote after its
# first listing. A default only: an explicit fsspec setting wins.
fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)


class StorageError(OSError):
    """A storage request that retrying cannot fix (or that kept failing until the deadline)."""

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    initial_delay_s: float = 0.5
    max_delay_s: float = 16.0
    deadline_s: float = 120.0  # total time spent on one operation, retries included


RETRY = RetryPolicy()

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_TYPES = (
    ConnectionError,  # refused, reset, aborted (builtin)
    TimeoutError,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.Timeout,
    http.client.HTTPException,  # BadStatusLine, IncompleteRead, RemoteDisconnected
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    storage_exceptions.DataCorruption,  # checksum mismatch: the bytes got damaged in flight
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in _TRANSIENT_STATUS
    if isinstance(exc, storage_exceptions.InvalidResponse):
        return exc.response.status_code in _TRANSIENT_STATUS
    if isinstance(exc, auth_exceptions.TransportError):
        return bool(exc.args) and isinstance(exc.args[0], BaseException) and is_transient(exc.args[0])
    return False


# -- client ----------------------------------------------------------------------------------

_clients: dict[tuple[int, str], storage.Client] = {}
_clients_lock = threading.Lock()
_known_buckets: set[str] = set()


def client() -> storage.Client:
    """One client per process (a forked child builds its own) and per emulator address."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    key = (os.getpid(), emulator)
    with _clients_lock:
        if key not in _clients:
            if emulator:
                from google.auth.credentials import AnonymousCredentials

                _clients[key] = storage.Client(project="megadoc", credentials=AnonymousCredentials())
            else:
                _clients[key] = storage.Client()
        return _clients[key]


def split(path: str) -> tuple[str, str]:
    """gs://bucket/a/b -> ("bucket", "a/b")."""
    if not path.startswith(PREFIX):
        raise ValueError(f"{path}: not a gs:// path")
    bucket, _, key = path[len(PREFIX):].partition("/")
    if not bucket:
        raise ValueError(f"{path}: no bucket name")
    return bucket, key


def blob(path: str) -> storage.Blob:
    bucket, key = split(path)
    return client().bucket(bucket).blob(key)


# -- retries and errors ----------------------------------------------------------------------

def retrying(path: str, op: Callable[[], T]) -> T:
    """op() with backoff on transient failures; permanent ones become clear errors naming path."""
    deadline = time.monotonic() + RETRY.deadline_s
    delay = RETRY.initial_delay_s
    attempt = 1
    while True:
        try:
            return op()
        except Exception as exc:  # noqa: BLE001 — classified right below
            if not is_transient(exc):
                error = _permanent_error(path, exc)
                if error is exc:
                    raise
                raise error from exc
            sleep = random.uniform(0, delay)  # full jitter
            if time.monotonic() + sleep > deadline:
                raise StorageError(errno.EIO, f"gave up after {attempt} attempts in "
                                   f"{RETRY.deadline_s:g}s: {_describe(exc)}", path) from exc
            log.warning("%s: transient storage error (attempt %d), retrying in %.2fs: %s",
                        path, attempt, sleep, _describe(exc))
            time.sleep(sleep)
            delay = min(delay * 2, RETRY.max_delay_s)
            attempt += 1


def _permanent_error(path: str, exc: Exception) -> OSError:
    code = getattr(exc, "code", None)
    if isinstance(exc, storage_exceptions.InvalidResponse):
        code = exc.response.status_code
    if code == 404:
        if not bucket_exists(split(path)[0]):
            return StorageError(errno.ENOENT, "bucket does not exist", path)
        return FileNotFoundError(errno.ENOENT, "no such object", path)
    if code == 403:
        return StorageError(errno.EACCES, f"permission denied: {_describe(exc)}", path)
    if code == 401:
        return StorageError(errno.EACCES, f"not authenticated: {_describe(exc)}", path)
    if code == 412:
        return StorageError(errno.ESTALE, "object changed while in use (precondition failed)",
                            path)
    if isinstance(exc, auth_exceptions.GoogleAuthError):
        return StorageError(errno.EACCES, f"no usable credentials: {exc}", path)
    if isinstance(exc, OSError):
        return exc
    return StorageError(errno.EIO, _describe(exc), path)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return f"HTTP {exc.code} {exc.message}".strip()
    return f"{type(exc).__name__}: {exc}"


def bucket_exists(bucket: str) -> bool:
    if bucket in _known_buckets:
        return True
    try:
        found = retrying(PREFIX + bucket, lambda: client().bucket(bucket).exists(retry=None))
    except StorageError as e:
        if e.errno != errno.EACCES:
            raise
        found = True  # 403, not 404: it exists, we may only touch objects (a common IAM role)
    if found:
        _known_buckets.add(bucket)
    return found


# -- operations ------------------------------------------------------------------------------

def read_bytes(path: str) -> bytes:
    return retrying(path, lambda: blob(path).download_as_bytes(retry=None))


def write_bytes(path: str, data: bytes) -> None:
    """One object upload: atomic on GCS (readers see the old object or the new one)."""
    retrying(path, lambda: blob(path).upload_from_string(data, retry=None))


def append_bytes(path: str, data: bytes) -> None:
    """Appends `data` to the object (creating it) uploading only `data`: a part object next to
    it, composed onto its end and then deleted, so a log of n flushes costs O(its size), not
    O(n · its size). The compose replaces the object atomically and only if it is still the
    generation read here; a compose whose answer was lost is recognised by the object's new
    size, so a retry never appends twice. One writer per object."""
    target = blob(path)
    try:
        retrying(path, lambda: target.reload(retry=None))
    except FileNotFoundError:
        write_bytes(path, data)
        return
    generation, size = target.generation, target.size
    directory, _, name = path.rpartition("/")
    part = f"{directory}/.{name}.append-{os.urandom(8).hex()}"
    write_bytes(part, data)
    attempts = []

    def compose():
        attempts.append(1)
        try:
            blob(path).compose([blob(path), blob(part)], if_generation_match=generation,
                               retry=None)
        except api_exceptions.PreconditionFailed:
            if len(attempts) > 1 and version(path)["size"] == size + len(data):
                return  # an earlier attempt composed; only its answer was lost
            raise

    try:
        retrying(path, compose)
    finally:
        remove(part)


def create_exclusive(path: str, data: bytes) -> bool:
    """Uploads the object only if none exists (a precondition GCS checks atomically); False when
    one already does. The existence check first spares an upload in the common case."""
    if is_object(path):
        return False
    try:
        retrying(path, lambda: blob(path).upload_from_string(data, if_generation_match=0,
                                                             retry=None))
    except StorageError as e:
        if e.errno != errno.ESTALE:
            raise
        return False
    return True


def upload_file(local_path: str, path: str) -> None:
    """One object from a local file (resumable in 100 MiB chunks when large; a retry restarts it)."""
    retrying(path, lambda: blob(path).upload_from_filename(local_path, retry=None))


def download_file(path: str, local_path: str) -> None:
    retrying(path, lambda: blob(path).download_to_filename(local_path, retry=None))


def version(path: str) -> dict:
    """The object's size and crc32c (which a copy keeps); FileNotFoundError when missing."""
    b = blob(path)
    retrying(path, lambda: b.reload(retry=None))
    return {"size": b.size, "crc32c": b.crc32c}


def is_object(path: str) -> bool:
    bucket, key = split(path)
    if not key:
        return False
    return retrying(path, lambda: blob(path).exists(retry=None))


def is_prefix(path: str) -> bool:
    """True when some object lives under path/ (what a local directory would be)."""
    bucket, key = split(path)
    prefix = key.rstrip("/") + "/" if key else ""

    def op():
        return any(True for _ in client().list_blobs(bucket, prefix=prefix, max_results=1,
                                                      retry=None))

    if not key:
        return bucket_exists(bucket)
    return retrying(path, op)


def list_children(path: str) -> list[str]:
    """Names directly under path/ (objects and "subdirectories"), sorted; [] when none."""
    bucket, key = split(path)
    prefix = key.rstrip("/") + "/" if key else ""

    def op():
        pages = client().list_blobs(bucket, prefix=prefix, delimiter="/", retry=None)
        names = {b.name[len(prefix):] for b in pages}  # iterating fills pages.prefixes too
        names |= {p[len(prefix):].rstrip("/") for p in pages.prefixes}
        return sorted(n for n in names if n)

    return retrying(path, op)


def list_recursive(path: str) -> list[str]:
    bucket, key = split(path)
    prefix = key.rstrip("/") + "/" if key else ""
    names = retrying(path, lambda: [b.name for b in client().list_blobs(bucket, prefix=prefix,
                                                                        retry=None)])
    return [f"{PREFIX}{bucket}/{n}" for n in names]


def remove(path: str) -> None:
    attempts = []

    def op():
        attempts.append(1)
        try:
            blob(path).delete(retry=None)
        except api_exceptions.NotFound:
            if len(attempts) > 1:  # an earlier attempt deleted it; only its answer was lost
                return
            raise

    retrying(path, op)


def remove_tree(path: str) -> None:
    """Deletes every object under path/, a few at a time in parallel; no error when none."""
    def remove_if_present(p: str) -> None:
        try:
            remove(p)
        except FileNotFoundError:
            pass

    paths = list_recursive(path)
    with concurrent.futures.ThreadPoolExecutor(DELETE_THREADS) as pool:
        list(pool.map(remove_if_present, paths))


def open_read(path: str) -> io.BufferedReader:
    return io.BufferedReader(_ObjectReader(path), buffer_size=READ_CHUNK_BYTES)


class _ObjectReader(io.RawIOBase):
    """Seekable ranged reads of one object generation; each range fetch is retried on its own,
    so a reset connection mid-file costs one chunk, not the file."""

    def __init__(self, path: str):
        self.path = path
        self._blob = blob(path)
        retrying(path, lambda: self._blob.reload(retry=None))
        self.size = self._blob.size
        self.generation = self._blob.generation
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readall(self) -> bytes:  # the default would fetch the rest 8 KiB per request
        parts = []
        while chunk := self.read(READ_CHUNK_BYTES):
            parts.append(chunk)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.size - self._pos)
        if n <= 0:
            return 0
        start, end = self._pos, self._pos + n - 1
        data = retrying(self.path, lambda: self._blob.download_as_bytes(
            start=start, end=end, if_generation_match=self.generation, checksum=None,
            retry=None))
        if len(data) != n:
            raise StorageError(errno.EIO, f"short read at byte {start}: got {len(data)} of {n}",
                               self.path)
        buffer[:n] = data
        self._pos += n
        return n
