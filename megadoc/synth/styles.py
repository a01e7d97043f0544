"""Rephrase styles: the shipped rephrase templates, one drawn for each sample.

Rephrasing every document one way gives a corpus of one voice; drawing the style per sample
(K2's style- and perspective-diverse prompting, WRAP's several styles) varies what the student
sees while each template keeps the same duties (the whole text, every fact, no invention, a
length cue). The draw is a hash of (seed, document, sample), so it never depends on where or in
which batch a sample is made. The paper's single Wikipedia-style prompt (`wikipedia`,
templates/rephrase.txt) stays the default: a job without `styles` uses it alone.
"""
from __future__ import annotations

import hashlib
import os

from megadoc import fs
from megadoc.synth import prompts

STYLES = {"wikipedia": "rephrase.txt", "textbook": "rephrase_textbook.txt",
          "qa": "rephrase_qa.txt", "beginner": "rephrase_beginner.txt",
          "academic": "rephrase_academic.txt"}
ALL = "all"


def load(styles: tuple[str, ...]) -> list[prompts.Template]:
    """The templates of `styles`: shipped style names, `all` (every one), or template files."""
    names = list(STYLES) if tuple(styles) == (ALL,) else list(styles)
    directory = os.path.dirname(prompts.builtin_template("rephrase"))
    unknown = [n for n in names if n not in STYLES and not fs.exists(n)]
    if unknown:
        raise ValueError(f"styles {unknown}: neither a shipped style ({', '.join(STYLES)}, or "
                         f"{ALL}) nor a template file")
    paths = [os.path.join(directory, STYLES[n]) if n in STYLES else n for n in names]
    return [prompts.load_template(p, "rephrase") for p in paths]


def draw(seed: int, doc_key: int, sample: int, count: int) -> int:
    """Which of `count` templates sample `sample` of the document with random stream `doc_key`
    uses."""
    digest = hashlib.sha256(f"style\0{seed}\0{doc_key}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count
