"""Styles: a method's shipped alternative templates (methods.Method.styles; rephrase's), one
drawn for each sample.

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
from megadoc.data import methods as methods_lib
from megadoc.synth import prompts

ALL = "all"


def load(method: str, styles: tuple[str, ...]) -> list[prompts.Template]:
    """The templates of `styles` for `method`: its shipped style names, `all` (every one), or
    template files."""
    shipped = methods_lib.get(method).styles
    names = list(shipped) if tuple(styles) == (ALL,) else list(styles)
    directory = os.path.dirname(prompts.builtin_template(method))
    unknown = [n for n in names if n not in shipped and not fs.exists(n)]
    if unknown:
        raise ValueError(f"styles {unknown}: neither a shipped {method} style "
                         f"({', '.join(shipped)}, or {ALL}) nor a template file")
    paths = [os.path.join(directory, shipped[n]) if n in shipped else n for n in names]
    return [prompts.load_template(p, method) for p in paths]


def draw(seed: int, doc_key: int, sample: int, count: int) -> int:
    """Which of `count` templates sample `sample` of the document with random stream `doc_key`
    uses."""
    digest = hashlib.sha256(f"style\0{seed}\0{doc_key}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count
