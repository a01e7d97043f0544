"""Paths are URLs: one small file layer for local paths and gs://bucket/key.

Every small-file read or write in megadoc goes through here (arrays go through tensorstore,
checkpoints through orbax). Writes are atomic: a reader sees the whole file or nothing.
Locally that is write-to-temp then rename; on GCS a single-object upload is atomic by itself.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import os
import shutil
import tempfile
from typing import Iterator

GCS_PREFIX = "gs://"


def is_gcs(path: str) -> bool:
    return str(path).startswith(GCS_PREFIX)


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        out = str(base).rstrip("/")
        for p in parts:
            out = out + "/" + str(p).strip("/")
        return out
    return os.path.join(base, *parts)


def _split_gcs(path: str) -> tuple[str, str]:
    rest = path[len(GCS_PREFIX):]
    bucket, _, key = rest.partition("/")
    return bucket, key


def _client():
    from google.cloud import storage  # imported lazily: local runs never need it

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="megadoc", credentials=AnonymousCredentials())
    return storage.Client()


def _blob(path: str):
    bucket, key = _split_gcs(path)
    return _client().bucket(bucket).blob(key)


def exists(path: str) -> bool:
    if is_gcs(path):
        if _blob(path).exists():
            return True
        return bool(listdir(path))
    return os.path.exists(path)


def makedirs(path: str) -> None:
    """Local: mkdir -p. GCS has no directories, so nothing to do."""
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under `path`, sorted; [] when it does not exist."""
    if is_gcs(path):
        bucket, key = _split_gcs(path)
        prefix = key.rstrip("/") + "/" if key else ""
        it = _client().list_blobs(bucket, prefix=prefix, delimiter="/")
        names = [b.name[len(prefix):] for b in it]
        names += [p[len(prefix):].rstrip("/") for p in it.prefixes]
        return sorted(n for n in set(names) if n)
    if not os.path.isdir(path):
        return []
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Files matching a pattern whose wildcards are in the last path component only."""
    base, _, name_pat = pattern.rpartition("/")
    return [join(base, n) for n in listdir(base) if fnmatch.fnmatch(n, name_pat)]


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        return _blob(path).download_as_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Atomic write: the file at `path` is either the old one or exactly `data`."""
    if is_gcs(path):
        _blob(path).upload_from_string(data)
        return
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def open_read(path: str) -> Iterator[io.BufferedIOBase]:
    """A binary file object for streaming reads (large files are not loaded whole)."""
    if is_gcs(path):
        with _blob(path).open("rb") as f:
            yield f
    else:
        with open(path, "rb") as f:
            yield f


def append_text(path: str, text: str) -> None:
    """Append to a log-like file (metrics.jsonl). GCS objects are immutable: rewrite whole."""
    if is_gcs(path):
        old = read_bytes(path) if _blob(path).exists() else b""
        write_bytes(path, old + text.encode("utf-8"))
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


def remove(path: str) -> None:
    if is_gcs(path):
        _blob(path).delete()
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    if is_gcs(path):
        bucket, key = _split_gcs(path)
        prefix = key.rstrip("/") + "/"
        for b in _client().list_blobs(bucket, prefix=prefix):
            b.delete()
    elif os.path.isdir(path):
        shutil.rmtree(path)
