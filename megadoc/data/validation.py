"""Named validation sets: window stores, or raw documents tokenized into windows here.

`--val=name=path` names a set. A window store is evaluated as it is. Documents (JSONL/Parquet,
as experiments.prepare reads them) are tokenized with the training stores' tokenizer, each BOS +
text + EOS, concatenated in file order and cut into windows of the training context length (the
remainder dropped, as Levanter's `TokenSeqDataset`), so a long-context set is scored with the
full context. A document set also yields `<name>_short` and `<name>_long`: its documents split in
half by tokenized length (Appendix F.2 of the megadocs paper splits the 1000 i.i.d. validation
documents 500/500 this way; Marin names the halves after the set).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.data import store as store_lib
from megadoc.data.prepare import encode_document
from megadoc.data.windows import Windower


@dataclasses.dataclass(frozen=True)
class WindowArray:
    """Windows held in memory, read like a `WindowStore` (the evaluator's interface)."""
    path: str
    metadata: dict
    tokens: np.ndarray  # int32 [num_windows, seq_len + 1]
    segment_ids: np.ndarray  # int32 [num_windows, seq_len + 1]

    @property
    def seq_len(self) -> int:
        return self.tokens.shape[1] - 1

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, indices) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64).reshape(-1)
        return {"tokens": self.tokens[indices], "segment_ids": self.segment_ids[indices]}


def is_store(path: str) -> bool:
    return fs.exists(fs.join(path, store_lib.METADATA)) or fs.exists(fs.join(path, "tokens"))


def open_sets(val: tuple[tuple[str, str], ...], real: store_lib.WindowStore) -> dict:
    """{name: store or WindowArray} for every --val set, document sets with their halves; a
    name given twice (or a half's name taken by another set) is refused, not overwritten."""
    out = {}
    tokenizer = None
    for name, path in val:
        if name in out:
            raise ValueError(f"--val={name}={path}: the name {name!r} is already taken (by "
                             f"{out[name].path}); give each validation set its own name")
        if is_store(path):
            out[name] = store_lib.open(path)
            continue
        if tokenizer is None:
            if not real.metadata.get("tokenizer_path"):
                raise ValueError(f"--val={name}={path}: documents need the training tokenizer, "
                                 f"but {real.path} names none; pass a window store instead")
            tokenizer = store_lib.recorded_tokenizer(real)
        sets = document_sets(name, path, tokenizer, real.seq_len)
        taken = sorted(set(sets) & set(out))
        if taken:
            raise ValueError(f"--val={name}={path}: a document set is also scored as {taken}, "
                             f"names an earlier --val already took; rename one of them")
        out.update(sets)
    return out


def document_sets(name: str, path: str, tokenizer, seq_len: int) -> dict[str, WindowArray]:
    """`name` (every document) and `name_short` / `name_long` (the shorter and the longer half by
    tokenized length; ties keep file order)."""
    encoded = [encode_document(tokenizer, (d["text"],)) for d in docs_lib.read_docs(path)
               if d["text"].strip()]
    if len(encoded) < 2:
        raise ValueError(f"--val={name}={path}: {len(encoded)} documents; a validation set of "
                         f"documents needs at least 2 (it is also split in half by length)")
    by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    half = len(encoded) // 2
    parts = {name: range(len(encoded)), f"{name}_short": sorted(by_length[:half]),
             f"{name}_long": sorted(by_length[half:])}
    return {part: _windows(part, path, [encoded[i] for i in indices], tokenizer, seq_len)
            for part, indices in parts.items()}


def _windows(name, path, encoded, tokenizer, seq_len) -> WindowArray:
    windower = Windower(seq_len)
    blocks = [b for ids in encoded for b in windower.add(ids)] + windower.flush()
    if not blocks:
        raise ValueError(f"{path}: validation set {name} holds {sum(map(len, encoded))} "
                         f"tokens, fewer than one window of {seq_len}+1")
    tokens, segment_ids = (np.concatenate(x) for x in zip(*blocks))
    metadata = {"tokenizer_fingerprint": tokenizer.fingerprint, "documents": len(encoded),
                "num_tokens": windower.num_tokens, "dropped_tail_tokens": windower.leftover_tokens}
    return WindowArray(f"{path}#{name}", metadata, tokens, segment_ids)
