"""GGUF files (llama.cpp's single-file model format), local or gs://, read with the `gguf`
package: metadata fields by key, tensors dequantized to float32. Shared by the model loader
(megadoc.models.gguf) and the tokenizer (megadoc.data.tokenizer)."""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from typing import Any, Iterator

import gguf
import numpy as np

from megadoc import fs

_MISSING = object()


def is_gguf(path: str) -> bool:
    return str(path).rstrip("/").endswith(".gguf")


@contextlib.contextmanager
def open_reader(path: str) -> Iterator[Any]:
    """A `gguf.GGUFReader` over the file (memory-mapped; a gs:// file is copied locally first).
    Parsing the metadata of a large vocabulary takes seconds, so a local file's reader is kept
    for the next caller (the tokenizer and the weights of one generator)."""
    if fs.is_gcs(path):
        with tempfile.TemporaryDirectory(prefix="megadoc-gguf-") as tmp:
            local = os.path.join(tmp, "model.gguf")
            fs.get_file(path, local)
            yield _parse(path, local)
        return
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: GGUF file not found")
    stat = os.stat(path)
    yield _local_reader(os.path.abspath(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _local_reader(path: str, mtime_ns: int, size: int):
    del mtime_ns, size  # in the cache key only: a rewritten file is parsed again
    return _parse(path, path)


def _parse(path: str, local: str):
    try:
        return gguf.GGUFReader(local)
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable GGUF file ({e})") from None


def field(reader, key: str, default: Any = _MISSING, *, path: str = "") -> Any:
    """A metadata value (str, number, bool or list); `default` when absent, else a ValueError
    naming the file and the key."""
    f = reader.fields.get(key)
    if f is None:
        if default is _MISSING:
            raise ValueError(f"{path}: GGUF metadata {key!r} missing")
        return default
    return f.contents()


def dequantized(tensor) -> np.ndarray:
    """A reader tensor as float32 in its logical shape (GGUF's dims reversed: [out, in] for a
    linear weight, as in Hugging Face checkpoints)."""
    array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(array, np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape)))
