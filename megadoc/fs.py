"""Paths are URLs: one small file layer for local paths and gs://bucket/key, same behaviour on both.

Every small-file read or write in megadoc goes through here (arrays go through tensorstore with
`tensorstore_kvstore(path)`, checkpoints through orbax). Writes are atomic: a reader sees the whole
file or nothing (locally write-to-temp then rename; on GCS one object upload is atomic by itself).
A directory of several files is published with `commit(dir)` last; readers check `is_committed`.
The one kind of file that grows is a log of JSON lines (`append_jsonl`, read back with
`read_jsonl_log`): an append cut short leaves a torn last line, which both cut off.

On gs:// (see megadoc.gcs): transient failures are retried with backoff; a missing object raises
FileNotFoundError like a missing local file; a missing bucket or a refused request raises
StorageError naming the path.
"""
from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import os
import shutil
import tempfile
import uuid
from typing import Iterator

from megadoc import gcs
from megadoc.gcs import StorageError  # noqa: F401  (re-exported: callers catch fs.StorageError)

GCS_PREFIX = gcs.PREFIX
COMMIT_MARKER = "_COMMITTED"


def is_gcs(path: str) -> bool:
    return str(path).startswith(GCS_PREFIX)


def storage_path(path: str) -> str:
    """What orbax, tensorstore and jax need for a path the user gave: an absolute local path
    (they refuse or misplace relative ones), or the gs:// URL unchanged. Only handed to those
    layers; what megadoc records (store metadata, run configs) keeps the path as written."""
    return str(path) if is_gcs(path) else os.path.abspath(os.path.expanduser(str(path)))


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        out = str(base).rstrip("/")
        for p in parts:
            out = out + "/" + str(p).strip("/")
        return out
    return os.path.join(base, *parts)


def exists(path: str) -> bool:
    """A file, or a directory (on GCS: any object under path/)."""
    if is_gcs(path):
        return gcs.is_object(path) or gcs.is_prefix(path)
    return os.path.exists(path)


def makedirs(path: str) -> None:
    """Local: mkdir -p. GCS has no directories, so nothing to do."""
    if not is_gcs(path):
        os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
    """Names (not paths) directly under `path`, sorted; [] when it does not exist."""
    if is_gcs(path):
        return gcs.list_children(path)
    if not os.path.isdir(path):
        return []
    return sorted(os.listdir(path))


def glob(pattern: str) -> list[str]:
    """Paths matching a pattern whose wildcards are in the last path component only, sorted."""
    base, slash, name_pat = str(pattern).rpartition("/")
    if any(c in base for c in "*?["):
        raise ValueError(f"{pattern}: wildcards are supported in the last component only")
    base = base or slash  # "/x*" lists "/", "x*" lists the working directory
    return [join(base, n) if base else n for n in listdir(base or ".")
            if fnmatch.fnmatch(n, name_pat)]


def version(path: str) -> dict:
    """What changes when a file's content does, without reading it: its size and, locally, its
    modification time (on GCS, the object's crc32c)."""
    if is_gcs(path):
        return gcs.version(path)
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def read_bytes(path: str) -> bytes:
    if is_gcs(path):
        return gcs.read_bytes(path)
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    """The file as UTF-8 text; bytes that are not UTF-8 are a ValueError naming the file and
    line (a UnicodeDecodeError names neither)."""
    return decode_utf8(read_bytes(path), path)


def decode_utf8(data: bytes, path: str, first_line: int = 1) -> str:
    """`data` (read from `path`, starting at line `first_line`) as text, or a ValueError naming
    the file, line and byte that are not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at column "
                         f"{column}: {e.reason}); save the file as UTF-8") from None


def write_bytes(path: str, data: bytes) -> None:
    """Atomic write: the file at `path` is either the old one or exactly `data`."""
    if is_gcs(path):
        gcs.write_bytes(path, data)
        return
    with _local_temp(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def create_exclusive(path: str, data: bytes) -> bool:
    """Writes `data` at `path` only if nothing is there yet (one winner among racing writers);
    False when something already is."""
    if is_gcs(path):
        return gcs.create_exclusive(path, data)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _FILE_MODE)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def put_file(local_path: str, path: str) -> None:
    """Publishes a finished local file (e.g. a large safetensors written with a local library) at
    `path`, atomically like write_bytes, without loading it into memory."""
    if is_gcs(path):
        gcs.upload_file(local_path, path)
        return
    with _local_temp(path) as tmp:
        shutil.copyfile(local_path, tmp)


def get_file(path: str, local_path: str) -> None:
    """Copies `path` to a local file (for libraries that need one, e.g. to mmap), atomically."""
    with _local_temp(local_path) as tmp:
        if is_gcs(path):
            gcs.download_file(path, tmp)
        else:
            shutil.copyfile(path, tmp)


def _umasked_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umasked_mode()


@contextlib.contextmanager
def _local_temp(path: str) -> Iterator[str]:
    """A temp file name beside local `path`, renamed onto it when the block succeeds."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; published files read like any other
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def open_read(path: str) -> Iterator[io.BufferedIOBase]:
    """A seekable binary file object for streaming reads (large files are not loaded whole)."""
    f = gcs.open_read(path) if is_gcs(path) else open(path, "rb")
    with f:
        yield f


def append_bytes(path: str, data: bytes) -> None:
    """Append to a file; on gs:// only the new bytes are uploaded (gcs.append_bytes)."""
    if is_gcs(path):
        gcs.append_bytes(path, data)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab") as f:
        f.write(data)


def append_jsonl(path: str, rows: list[dict]) -> None:
    """Appends `rows` to a log of JSON lines (metrics.jsonl, a search's results.jsonl, progress
    lines), one line each. A torn last line, left by a writer killed mid-append or a full disk,
    is cut off first (and said so) rather than glued to the new rows. On gs:// an append is a
    compose of the new bytes onto the object (gcs.append_bytes): atomic, so it tears nothing,
    and it uploads only the new bytes."""
    if not rows:
        return
    text = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    if is_gcs(path):
        gcs.append_bytes(path, text)
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "ab+") as f:
        size = f.seek(0, io.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.seek(0)
                f.truncate(len(_without_torn_tail(path, f.read())))
                f.seek(0, io.SEEK_END)
        f.write(text)


def read_jsonl_log(path: str) -> list[tuple[int, dict]]:
    """(line number, row) of every row of a log written by `append_jsonl`; [] when there is
    none. A torn final line (no newline: its append never finished) is reported and cut off,
    so the log can be appended to again; a line that is not a JSON object anywhere else is a
    ValueError naming the file and line (something other than megadoc wrote it)."""
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        return []
    whole = _without_torn_tail(path, data)
    if len(whole) != len(data):
        write_bytes(path, whole)
    out = []
    for lineno, line in enumerate(whole.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(decode_utf8(line, path, lineno))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not a JSON line ({e}); only its last line "
                             f"can be torn by an interrupted append") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got "
                             f"{type(row).__name__}")
        out.append((lineno, row))
    return out


def _without_torn_tail(path: str, data: bytes) -> bytes:
    """`data` up to its last newline; what follows it is an append that never finished."""
    end = data.rfind(b"\n") + 1
    if end < len(data):
        line = data.count(b"\n") + 1
        print(f"[fs] {path}:{line}: dropping a torn last line "
              f"({len(data) - end} bytes, an append that never finished): "
              f"{data[end:end + 60]!r}", flush=True)
    return data[:end]


def remove(path: str) -> None:
    """Deletes one file; FileNotFoundError when there is none."""
    if is_gcs(path):
        gcs.remove(path)
    else:
        os.remove(path)


def rmtree(path: str) -> None:
    """Deletes a directory and everything under it; nothing to do when it does not exist."""
    if is_gcs(path):
        gcs.remove_tree(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


def check_writable(directory: str) -> None:
    """Writes and deletes a probe file, so that a job fails in its first second, not after
    hours of compute, when its output bucket is missing or read-only (StorageError naming it).
    Leaves nothing behind: local directories it had to create are removed again, so a job
    that then refuses its inputs leaves no empty output directory."""
    probe = join(directory, f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    created = [] if is_gcs(directory) else _missing_directories(directory)
    try:
        write_bytes(probe, b"")
        remove(probe)
    finally:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(d)


def _missing_directories(directory: str) -> list[str]:
    """`directory` and those of its ancestors that do not exist, deepest first."""
    out, d = [], os.path.abspath(directory)
    while not os.path.exists(d) and d != os.path.dirname(d):
        out.append(d)
        d = os.path.dirname(d)
    return out


def tensorstore_kvstore(path: str) -> dict:
    """The tensorstore kvstore spec of a directory, local or gs://:
    `ts.open({"driver": "zarr3", "kvstore": fs.tensorstore_kvstore(path), ...})`."""
    if is_gcs(path):
        bucket, key = gcs.split(str(path))
        return {"driver": "gcs", "bucket": bucket, "path": key.rstrip("/") + "/" if key else ""}
    return {"driver": "file", "path": storage_path(path) + "/"}


def commit(directory: str, info: dict | None = None) -> None:
    """Publishes a directory whose files are all written: the marker is the last object, so a
    reader that requires it never sees a partial directory (GCS has no directory rename)."""
    write_text(join(directory, COMMIT_MARKER), json.dumps(info or {}, sort_keys=True) + "\n")


def is_committed(directory: str) -> bool:
    return exists(join(directory, COMMIT_MARKER))
