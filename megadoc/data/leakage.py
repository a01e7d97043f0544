"""Leakage audit: training documents (the sources every generation is made from) that are, or
nearly are, validation documents.

A document leaks when it has a validation document's text (whitespace aside) or a near copy of
it: word-5-gram Jaccard similarity at least `threshold`. Near copies are found with a MinHash
LSH index over the validation documents and confirmed on the exact shingle sets, so the cost
per training document is one signature, whatever the size of the validation sets. A document
with a validation document's id but another text is reported, not counted as a leak: files
numbered from 0 each ("0", "1", ...) share ids without sharing documents.
"""
from __future__ import annotations

import dataclasses
import hashlib

from megadoc import fs
from megadoc.data import docs as docs_lib
from megadoc.data import overlap
from megadoc.data import store as store_lib

DEFAULT_THRESHOLD = 0.8


@dataclasses.dataclass(frozen=True)
class Match:
    """A training document found in a validation set, and how."""
    doc_id: str
    where: str  # file:line of the training document
    val_set: str
    val_id: str
    val_where: str
    kind: str  # "text" | "near_duplicate" | "same_id" (another text: reported, no leak)
    similarity: float  # word-5-gram Jaccard similarity of the two texts

    def leaks(self) -> bool:
        return self.kind != "same_id"

    def describe(self) -> str:
        return (f"{self.where} (id {self.doc_id!r}) matches validation set {self.val_set!r} "
                f"document {self.val_id!r} at {self.val_where} by {self.kind} "
                f"(5-gram Jaccard {self.similarity:.2f})")


def _text_key(text: str) -> bytes:
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).digest()


class ValidationIndex:
    """Every document of the named validation sets, ready to be matched against."""

    def __init__(self, val: tuple[tuple[str, str], ...], threshold: float = DEFAULT_THRESHOLD):
        if not 0 < threshold <= 1:
            raise ValueError(f"leakage threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.docs: list[tuple[str, dict, frozenset]] = []  # (set name, doc, its shingles)
        self.by_id: dict[str, list[int]] = {}
        self.by_text: dict[bytes, list[int]] = {}
        self.minhash = overlap.MinHash()
        for name, path in val:
            if not is_document_set(path):
                raise ValueError(f"--val={name}={path} is a window store; the leakage audit "
                                 f"compares texts, so give the validation documents (JSONL or "
                                 f"Parquet) instead")
            for doc in docs_lib.read_docs(path):
                if not doc["text"].strip():
                    continue
                i = len(self.docs)
                grams = overlap.shingles(doc["text"], overlap.DOCUMENT_NGRAM)
                self.docs.append((name, doc, grams))
                self.by_id.setdefault(doc["id"], []).append(i)
                self.by_text.setdefault(_text_key(doc["text"]), []).append(i)
                self.minhash.add(i, self.minhash.signature(grams))

    def __len__(self) -> int:
        return len(self.docs)

    def matches(self, doc: dict) -> list[Match]:
        """How `doc` ({id, text, where}) matches validation documents; empty when it does not."""
        grams = overlap.shingles(doc["text"], overlap.DOCUMENT_NGRAM)
        found: dict[int, str] = {}
        for i in self.by_text.get(_text_key(doc["text"]), ()):
            found.setdefault(i, "text")
        for i in self.minhash.candidates(self.minhash.signature(grams)):
            if i not in found and overlap.jaccard(grams, self.docs[i][2]) >= self.threshold:
                found[i] = "near_duplicate"
        for i in self.by_id.get(doc["id"], ()):
            found.setdefault(i, "same_id")
        return [Match(doc["id"], doc["where"], self.docs[i][0], self.docs[i][1]["id"],
                      self.docs[i][1]["where"], kind,
                      round(overlap.jaccard(grams, self.docs[i][2]), 4))
                for i, kind in sorted(found.items())]


def is_document_set(path: str) -> bool:
    """Whether a --val path holds documents (not a window store), so it can be audited."""
    return not (fs.exists(fs.join(path, store_lib.METADATA)) or fs.exists(fs.join(path, "tokens")))


def check(docs: str, val: tuple[tuple[str, str], ...], shown: int = 20) -> None:
    """A ValueError listing the documents of `docs` found in the `val` sets, if any."""
    index = ValidationIndex(val)
    found = [m for doc in docs_lib.read_docs(docs) if doc["text"].strip()
             for m in index.matches(doc)]
    for m in (m for m in found if not m.leaks()):
        print(f"[leakage] not a leak, but check the ids: {m.describe()}", flush=True)
    found = [m for m in found if m.leaks()]
    if found:
        listing = "\n  ".join(m.describe() for m in found[:shown])
        more = f"\n  ... and {len(found) - shown} more" if len(found) > shown else ""
        raise ValueError(f"{docs}: {len({m.doc_id for m in found})} document(s) are in a "
                         f"validation set (--val); their generations would leak it into "
                         f"training:\n  {listing}{more}")
