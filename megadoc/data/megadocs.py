"""Megadoc recipes: pure functions from one document and its generations to stream documents.

A stream document is what the prepare job permutes, tokenizes and packs as one unit: its pieces
are each followed by EOS in the stream, and the whole starts with BOS when the tokenizer has one
(papers §3.1 / §4.1, Appendix H).

    real      one stream document: the real text
    simple    every generation its own stream document (by method, then sample order), and the
              real text its own when include_real: each is shuffled independently across the
              whole corpus ("shuffled as independent short documents", §1)
    stitched  one stream document per source: its generations in that order and the real text,
              joined with EOS ("all rephrases and the real doc (with EOS)", §4.1), the real text
              last | first | absent (real_position); with "none" and include_real the real text is
              its own stream document instead
    latent    one stream document: the real text with each thought inserted at its character offset
              as <think>thought</think> (offset order, then sample order); deleting the think spans
              gives back the real text exactly
"""
from __future__ import annotations

import dataclasses

from megadoc.data import methods

RECIPES = ("real", "simple", "stitched", "latent")
REAL_POSITIONS = ("last", "first", "none")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclasses.dataclass(frozen=True)
class StreamDocument:
    part: str  # which part of its source this is: "" for the source's main document, else e.g. "rephrase 3"
    pieces: tuple[str, ...]  # each followed by EOS in the stream


def build_documents(recipe: str, doc: dict, generations: list[dict], *,
                    real_position: str = "last", include_real: bool = True) -> list[StreamDocument]:
    """A recipe takes the generations whose method lists it (data/methods.py): latent
    thoughts feed `latent`; rephrases, QA pairs, focal rewrites and EntiGraph texts feed
    `simple` and `stitched` alike."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {RECIPES}")
    if real_position not in REAL_POSITIONS:
        raise ValueError(f"real_position {real_position!r}: expected one of {REAL_POSITIONS}")
    text = doc["text"]
    generations = [g for g in generations if recipe in methods.METHODS[g["method"]].recipes]
    real = [StreamDocument("", (text,))] if include_real else []
    if recipe == "real":
        return [StreamDocument("", (text,))]
    if recipe == "latent":
        if not include_real:
            raise ValueError("a latent megadoc is the real text with thoughts in it: "
                             "include_real=False has no meaning for it")
        thoughts = sorted(generations, key=lambda g: (g["offset"], g["sample"]))
        return [StreamDocument("", (insert_thoughts(text, thoughts, doc_id=doc["id"]),))]
    rephrases = sorted(generations, key=lambda g: (g["method"], g["sample"]))
    if recipe == "simple":
        return [StreamDocument(f"{g['method']} {g['sample']}", (g["text"],)) for g in rephrases] + real
    texts = tuple(g["text"] for g in rephrases)
    if real_position == "none":
        return ([StreamDocument("rephrases", texts)] if texts else []) + real
    if not include_real:
        raise ValueError(f"real_position={real_position!r} puts the real text in the megadoc; "
                         f"use real_position='none' to leave it out")
    return [StreamDocument("", texts + (text,) if real_position == "last" else (text,) + texts)]


def insert_thoughts(text: str, thoughts: list[dict], *, doc_id: str = "?") -> str:
    out, start = [], 0
    for t in thoughts:
        offset = t["offset"]
        if not start <= offset <= len(text):
            raise ValueError(f"doc {doc_id}: thought offset {offset} outside [{start}, {len(text)}]")
        out += [text[start:offset], THINK_OPEN, t["text"], THINK_CLOSE]
        start = offset
    out.append(text[start:])
    return "".join(out)

