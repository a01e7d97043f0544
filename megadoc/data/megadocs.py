"""Megadoc recipes: pure functions from one document and its generations to stream documents.

    real      [text]
    simple    each generation its own document (by method, then sample order), then the real
              text as its own document when include_real
    stitched  one megadoc: the generations in that order joined by SEPARATOR, with the real text
              last | first | absent (real_position); with "none" and include_real the real text
              is added as its own document instead
    latent    one megadoc: the real text with each thought inserted at its character offset as
              <think>thought</think> (offset order, then sample order); deleting the think spans
              gives back the real text exactly
"""
from __future__ import annotations

import re

RECIPES = ("real", "simple", "stitched", "latent")
REAL_POSITIONS = ("last", "first", "none")
SEPARATOR = "\n\n"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_THINK_SPAN = re.compile(re.escape(THINK_OPEN) + ".*?" + re.escape(THINK_CLOSE), re.DOTALL)


def build_documents(recipe: str, doc: dict, generations: list[dict], *,
                    real_position: str = "last", include_real: bool = True) -> list[str]:
    """Any generation method but latent thoughts feeds simple and stitched: rephrases, QA
    pairs, focal rewrites and EntiGraph texts alike."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe {recipe!r}: expected one of {RECIPES}")
    if real_position not in REAL_POSITIONS:
        raise ValueError(f"real_position {real_position!r}: expected one of {REAL_POSITIONS}")
    text = doc["text"]
    if recipe == "real":
        return [text]
    if recipe == "latent":
        if not include_real:
            raise ValueError("a latent megadoc is the real text with thoughts in it: "
                             "include_real=False has no meaning for it")
        thoughts = sorted((g for g in generations if g["method"] == "latent_thought"),
                          key=lambda g: (g["offset"], g["sample"]))
        return [insert_thoughts(text, thoughts, doc_id=doc["id"])]
    rephrases = [g["text"] for g in sorted((g for g in generations if g["method"] != "latent_thought"),
                                           key=lambda g: (g["method"], g["sample"]))]
    if recipe == "simple":
        return rephrases + ([text] if include_real else [])
    if real_position == "none":
        return [SEPARATOR.join(rephrases)] + ([text] if include_real else [])
    if not include_real:
        raise ValueError(f"real_position={real_position!r} puts the real text in the megadoc; "
                         f"use real_position='none' to leave it out")
    pieces = rephrases + [text] if real_position == "last" else [text] + rephrases
    return [SEPARATOR.join(pieces)]


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


def remove_thoughts(megadoc: str) -> str:
    return _THINK_SPAN.sub("", megadoc)
