"""Window stores: random-access int32 windows of seq_len+1 tokens, local or gs://.

Layout of a store directory:
    tokens/        zarr3 array int32 [num_windows, seq_len+1]
    segment_ids/   zarr3 array int32 [num_windows, seq_len+1]; 1, 2, ... per document in a window
    metadata.json  written last: a store without it is incomplete and refused

Each array is cut into shards of `shard_windows` rows (one object each) holding one compressed
chunk per window, so reading a random window touches one small chunk. Unwritten rows read back as
-1 tokens and 0 segment ids, which no complete store contains: reads check for them, so a lost or
truncated shard is an error, never a batch of zeros.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tensorstore as ts

from megadoc import fs
from megadoc.data import tokenizer as tokenizer_lib

FORMAT = "megadoc.windows/1"
METADATA = "metadata.json"
ARRAYS = ("tokens", "segment_ids")
_FILL = {"tokens": -1, "segment_ids": 0}
# What a store directory may hold (prepare keeps its resume point beside the arrays): only a
# directory holding nothing else is ever replaced by a new store.
OWN_ENTRIES = (*ARRAYS, METADATA, "prepare_progress.json")
_SHARD_BYTES = 8 << 20


def default_shard_windows(seq_len: int) -> int:
    return int(np.clip(_SHARD_BYTES // (4 * (seq_len + 1)), 16, 1 << 16))


def _context(cache_bytes: int) -> ts.Context:
    return ts.Context({"cache_pool": {"total_bytes_limit": cache_bytes}})


class StoreWriter:
    """Appends windows, writing whole shards as they fill; `flush()` also writes a partial last
    shard (so a job can record a resume point); `finish(metadata)` writes metadata.json last.

    `resume_at=n` reopens a partial store and continues after its first n windows (anything the
    interrupted job wrote beyond them is overwritten); otherwise `path` is started afresh.
    """

    def __init__(self, path: str, seq_len: int, shard_windows: int | None = None,
                 resume_at: int | None = None):
        self.path = path
        self.seq_len = seq_len
        self.shard_windows = shard_windows or default_shard_windows(seq_len)
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_rows = 0
        if resume_at is None:
            check_replaceable(path)
            if fs.exists(path):
                fs.rmtree(path)
            fs.makedirs(path)
            self._arrays = {name: self._create(name) for name in ARRAYS}
            self.num_windows = 0
        else:
            self._arrays = {name: self._reopen(name) for name in ARRAYS}
            self.num_windows = resume_at

    def _reopen(self, name: str) -> ts.TensorStore:
        arr = ts.open({"driver": "zarr3", "kvstore": fs.tensorstore_kvstore(fs.join(self.path, name)),
                       "open": True}, context=_context(0)).result()
        if arr.shape[1] != self.seq_len + 1:
            raise ValueError(f"{fs.join(self.path, name)}: windows of {arr.shape[1]} tokens, "
                             f"expected {self.seq_len + 1}")
        return arr

    def _create(self, name: str) -> ts.TensorStore:
        width = self.seq_len + 1
        inner = [{"name": "bytes", "configuration": {"endian": "little"}},
                 {"name": "zstd", "configuration": {"level": 1}}]
        index = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
        sharding = {"name": "sharding_indexed", "configuration": {
            "chunk_shape": [1, width], "codecs": inner, "index_codecs": index,
            "index_location": "start"}}  # a plain byte range: no suffix reads needed
        spec = {
            "driver": "zarr3",
            "kvstore": fs.tensorstore_kvstore(fs.join(self.path, name)),
            "metadata": {
                "shape": [0, width], "data_type": "int32", "fill_value": _FILL[name],
                "chunk_grid": {"name": "regular",
                               "configuration": {"chunk_shape": [self.shard_windows, width]}},
                "codecs": [sharding],
            },
            "create": True,
            "delete_existing": True,
        }
        return ts.open(spec, context=_context(0)).result()  # written once, never read back

    def append(self, tokens_NxW: np.ndarray, segment_ids_NxW: np.ndarray) -> None:
        width = self.seq_len + 1
        if tokens_NxW.shape != segment_ids_NxW.shape or tokens_NxW.shape[1:] != (width,):
            raise ValueError(f"{self.path}: windows must be [n, {width}], got "
                             f"{tokens_NxW.shape} and {segment_ids_NxW.shape}")
        self._pending.append({"tokens": tokens_NxW.astype(np.int32),
                              "segment_ids": segment_ids_NxW.astype(np.int32)})
        self._pending_rows += len(tokens_NxW)
        while self._pending_rows >= self._rows_to_shard_end():
            self._write(self._rows_to_shard_end())

    def _rows_to_shard_end(self) -> int:
        return self.shard_windows - self.num_windows % self.shard_windows

    def flush(self) -> None:
        if self._pending_rows:
            self._write(self._pending_rows)

    def _write(self, rows: int) -> None:
        block = {k: np.concatenate([p[k] for p in self._pending]) for k in ARRAYS}
        rest = {k: v[rows:] for k, v in block.items()}
        self._pending = [rest] if len(rest["tokens"]) else []
        self._pending_rows = len(rest["tokens"])
        start, stop = self.num_windows, self.num_windows + rows
        for name in ARRAYS:
            arr = self._arrays[name]
            if stop > arr.shape[0]:
                arr = self._arrays[name] = arr.resize(exclusive_max=[stop, None], expand_only=True).result()
            arr[start:stop].write(block[name][:rows]).result()
        self.num_windows = stop

    def finish(self, metadata: dict) -> dict:
        self.flush()
        for name in ARRAYS:  # drop rows an interrupted earlier run may have written past the end
            self._arrays[name] = self._arrays[name].resize(
                exclusive_max=[self.num_windows, None], resize_metadata_only=True).result()
        metadata = dict(metadata, format=FORMAT, seq_len=self.seq_len,
                        num_windows=self.num_windows, shard_windows=self.shard_windows)
        fs.write_text(fs.join(self.path, METADATA), json.dumps(metadata, indent=1, sort_keys=True))
        return metadata


def check_replaceable(path: str) -> None:
    """Refuses to start a store where something other than a window store (complete or in
    progress) lives: a mistyped --output must never delete a user's files."""
    if not fs.is_gcs(path) and os.path.isfile(path):
        raise FileExistsError(f"{path}: is a file, not a window store; choose another --output")
    foreign = [n for n in fs.listdir(path)
               if n not in OWN_ENTRIES and not n.startswith((".tmp-", ".write-probe"))]
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise FileExistsError(f"{path}: holds files that are not a window store ({shown}); "
                              f"refusing to replace it: choose an empty or new --output")


class WindowStore:
    def __init__(self, path: str, metadata: dict, arrays: dict[str, ts.TensorStore]):
        self.path = path
        self.metadata = metadata
        self.seq_len = int(metadata["seq_len"])
        self.shard_windows = int(metadata["shard_windows"])
        self._arrays = arrays

    def __len__(self) -> int:
        return int(self.metadata["num_windows"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"{self.path}: window {i} out of range [0, {len(self)})")
        return {k: v[0] for k, v in self.read([i % len(self)]).items()}

    def read(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Windows at `indices` (any order, repeats allowed) as int32 [n, seq_len+1] arrays."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(indices) == 0:
            return {k: np.zeros((0, self.seq_len + 1), np.int32) for k in ARRAYS}
        if indices.min() < 0 or indices.max() >= len(self):
            raise IndexError(f"{self.path}: window indices must lie in [0, {len(self)})")
        unique, inverse = np.unique(indices, return_inverse=True)
        try:
            futures = {k: self._arrays[k].oindex[unique].read() for k in ARRAYS}
            out = {k: f.result()[inverse] for k, f in futures.items()}
        except ValueError as e:
            raise ValueError(f"{self.path}: store is corrupt; reading windows "
                             f"{unique[:8].tolist()}... failed: {e}") from e
        bad = (out["segment_ids"] <= 0).any(axis=1) | (out["tokens"] < 0).any(axis=1)
        if bad.any():
            window = int(indices[bad][0])
            shard = fs.join(self.path, "{tokens,segment_ids}", "c", str(window // self.shard_windows), "0")
            raise ValueError(
                f"{self.path}: windows {sorted(set(indices[bad].tolist()))[:8]} hold no data: "
                f"shard {shard} is missing or truncated; the store is corrupt, prepare it again")
        return out


def is_complete(path: str) -> bool:
    return fs.exists(fs.join(path, METADATA))


def open(path: str) -> WindowStore:  # noqa: A001 - the contract's name
    path = str(path).rstrip("/")
    meta_path = fs.join(path, METADATA)
    if not fs.exists(meta_path):
        if fs.exists(path):
            raise ValueError(f"{path}: incomplete window store (no {METADATA}: the prepare job "
                             f"did not finish); run experiments.prepare again")
        raise FileNotFoundError(f"{path}: no window store here")
    try:
        metadata = json.loads(fs.read_text(meta_path))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: corrupt metadata: {e}") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {metadata.get('format')!r}, expected {FORMAT!r}")
    expected = [int(metadata["num_windows"]), int(metadata["seq_len"]) + 1]
    arrays = {}
    for name in ARRAYS:
        try:
            arr = ts.open({"driver": "zarr3", "kvstore": fs.tensorstore_kvstore(fs.join(path, name)),
                           "open": True, "recheck_cached_data": "open",
                           "recheck_cached_metadata": "open"}, context=_context(16 << 20)).result()
        except ValueError as e:
            raise ValueError(f"{fs.join(path, name)}: cannot open window array: {e}") from e
        if list(arr.shape) != expected or arr.dtype != ts.int32:
            raise ValueError(f"{fs.join(path, name)}: array {arr.dtype} {list(arr.shape)} does not "
                             f"match {METADATA} (int32 {expected}); the store is corrupt")
        arrays[name] = arr
    return WindowStore(path, metadata, arrays)


def recorded_tokenizer_path(store: WindowStore) -> str:
    """The tokenizer path the store's metadata records, checked to be readable from here: a
    relative one is read from the directory prepare ran in, and from elsewhere is an error
    saying so, not a bare "No such file"."""
    path = store.metadata.get("tokenizer_path")
    if not path:
        raise ValueError(f"{fs.join(store.path, METADATA)}: records no tokenizer_path; pass the "
                         f"tokenizer the store was prepared with")
    if not fs.exists(path):
        where = (f"a relative path, read from the directory prepare ran in, not from "
                 f"{os.getcwd()}; run from there, or prepare the store again with an absolute "
                 f"--tokenizer" if not fs.is_gcs(path) and not os.path.isabs(path)
                 else "it was moved or deleted; put it back, or prepare the store again")
        raise FileNotFoundError(f"{fs.join(store.path, METADATA)}: the store's recorded "
                                f"tokenizer {path!r} does not exist ({where})")
    return path


def recorded_tokenizer(store: WindowStore):
    """The tokenizer the store was prepared with (from its recorded path, checked against its
    recorded fingerprint)."""
    tokenizer = tokenizer_lib.load(recorded_tokenizer_path(store))
    check_tokenizer(store, tokenizer)
    return tokenizer


def check_tokenizer(store: WindowStore, tokenizer) -> None:
    """Refuse a store tokenized by a different tokenizer than the one the model uses."""
    check_fingerprint(store, tokenizer.fingerprint, getattr(tokenizer, "path", "?"))


def check_fingerprint(store: WindowStore, fingerprint: str, source: str) -> None:
    """Refuse a store whose token ids are another tokenizer's than `fingerprint` (that of
    `source`): with the same vocabulary size or not, its ids would mean other strings."""
    want = store.metadata.get("tokenizer_fingerprint")
    if want != fingerprint:
        raise ValueError(
            f"{store.path}: prepared with tokenizer {want} "
            f"({store.metadata.get('tokenizer_path')}), but {source} has tokenizer fingerprint "
            f"{fingerprint}; prepare the data again with that tokenizer")
