"""Pair stores: the training data of a conditional LM p(x2 | x1) (Synthetic Bootstrapped
Pretraining's step 2), as a loss-masked window store.

Each pair (x1, x2) of related documents fills one window, written the way the two would follow
each other in a training stream: `BOS x1 EOS BOS x2 EOS` (no BOS where the tokenizer has none),
so the separator is the document boundary itself, then padding (EOS tokens in a segment of their
own). The loss mask is 1 on x2's tokens and its final EOS and 0 on x1, the separator and the
padding, so the model learns to write x2 given x1 and nothing else. A pair longer than a window
keeps the heads of both: x1 gets at least half the window when x2 needs the rest, and the cut
pairs are counted in the metadata. `conditional_prompt` gives the same `x1 <separator>` prefix
for sampling x2 from the trained model.

Pairs come as JSONL records {"x1": doc id, "x2": doc id, "score": float} (the pairs command
writes them); documents by id from any docs path.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import time

import numpy as np

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib

RECIPE = "sbp_pairs"


@dataclasses.dataclass(frozen=True)
class PairStoreConfig:
    """One loss-masked pair store."""
    docs: str
    """source documents {id, text}: JSONL(.gz)/Parquet file, dir or glob"""
    pairs: str
    """pair records {x1, x2, score}: the pairs command's pairs.jsonl"""
    tokenizer: str
    """the conditional model's tokenizer (sentencepiece .model, tokenizer.json, GGUF or a dir)"""
    seq_len: int
    """window length; windows hold seq_len+1 tokens, one pair each"""
    output: str
    """store directory (local or gs://)"""


def separator(tokenizer) -> list[int]:
    """What sits between x1 and x2: the end of one document and the start of the next."""
    return [tokenizer.eos_id] + ([] if tokenizer.bos_id is None else [tokenizer.bos_id])


def _head(tokenizer) -> list[int]:
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


def conditional_prompt(tokenizer, x1_text: str, max_tokens: int) -> list[int]:
    """`BOS x1 <separator>` in at most `max_tokens` tokens, x1's head kept: the prefix x2 is
    sampled after."""
    sep = separator(tokenizer)
    x1 = (_head(tokenizer) + tokenizer.encode(x1_text))[:max(1, max_tokens - len(sep))]
    return x1 + sep


def pair_window(tokenizer, x1_text: str, x2_text: str,
                width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(tokens, segment_ids, loss_mask) of one window of `width` tokens, and whether the pair
    was cut to fit."""
    sep = separator(tokenizer)
    x1 = _head(tokenizer) + tokenizer.encode(x1_text)
    x2 = tokenizer.encode(x2_text) + [tokenizer.eos_id]
    room = width - len(sep)
    x1_keep = min(len(x1), max(room // 2, room - len(x2)))
    x2_keep = min(len(x2), room - x1_keep)
    used = x1_keep + len(sep) + x2_keep
    tokens = np.full(width, tokenizer.eos_id, np.int32)
    tokens[:used] = x1[:x1_keep] + sep + x2[:x2_keep]
    segment_ids = np.where(np.arange(width) < used, 1, 2).astype(np.int32)
    loss_mask = np.zeros(width, np.int32)
    loss_mask[x1_keep + len(sep):used] = 1
    return tokens, segment_ids, loss_mask, used < len(x1) + len(sep) + len(x2)


def read_pairs(path: str) -> list[dict]:
    """The pair records of a JSONL file, each checked to name two documents and a score."""
    out = []
    for n, line in enumerate(fs.read_text(path).splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            record = {}
        if not (isinstance(record, dict) and isinstance(record.get("x1"), str)
                and isinstance(record.get("x2"), str)
                and isinstance(record.get("score"), (int, float))):
            raise ValueError(f"{path}:{n}: expected a pair record {{x1: id, x2: id, score}}, "
                             f"got {line[:200]}")
        out.append(record)
    return out


def build(cfg: PairStoreConfig) -> dict:
    """Write the pair store (one window per pair, in the pairs file's order: the trainer
    permutes windows); returns its metadata."""
    start = time.time()
    tokenizer = tokenizer_lib.load(cfg.tokenizer)
    bad = docs_lib.BadRecords()
    texts = {d["id"]: d["text"] for d in docs_lib.read_docs(cfg.docs, bad)}
    pairs = read_pairs(cfg.pairs)
    unknown = [p[k] for p in pairs for k in ("x1", "x2") if p[k] not in texts]
    if unknown:
        raise ValueError(f"{cfg.pairs}: {len(unknown)} pair ends are not documents of "
                         f"{cfg.docs} (e.g. {unknown[:3]}); pair and build from the same docs")
    if not pairs:
        raise ValueError(f"{cfg.pairs}: no pairs; lower the pairs command's --threshold")
    writer = store_lib.StoreWriter(cfg.output, cfg.seq_len, loss_mask=True)
    counts = collections.Counter()
    for p in pairs:
        tokens, segment_ids, loss_mask, cut = pair_window(tokenizer, texts[p["x1"]],
                                                          texts[p["x2"]], cfg.seq_len + 1)
        writer.append(tokens[None], segment_ids[None], loss_mask[None])
        counts["pairs"] += 1
        counts["pairs_cut"] += int(cut)
        counts["target_tokens"] += int(loss_mask[1:].sum())
    return writer.finish({
        "recipe": RECIPE, "docs": cfg.docs, "pairs": cfg.pairs, "tokenizer_path": cfg.tokenizer,
        "tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id,
        "num_tokens": counts["pairs"] * cfg.seq_len, "counts": dict(counts),
        "skipped": bad.as_dict(), "elapsed_s": round(time.time() - start, 3)})
