"""GGUF files (llama.cpp's single-file model format), local or gs://, read with the `gguf`
package: metadata fields by key, tensors dequantized to float32. Shared by the model loader
(megadoc.models.gguf) and the tokenizer (megadoc.data.tokenizer)."""
from __future__ import annotations

import contextlib
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
    """A `gguf.GGUFReader` over the file (memory-mapped; a gs:// file is copied locally first)."""
    with contextlib.ExitStack() as stack:
        local = path
        if fs.is_gcs(path):
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="megadoc-gguf-"))
            local = os.path.join(tmp, "model.gguf")
            fs.get_file(path, local)
        elif not os.path.exists(path):
            raise FileNotFoundError(f"{path}: GGUF file not found")
        try:
            reader = gguf.GGUFReader(local)
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a readable GGUF file ({e})") from None
        yield reader


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
