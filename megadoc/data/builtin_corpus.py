"""A corpus of human-written English prose that every Python install already carries.

The demo must run with no download, so its "real documents" come from two sources shipped with
CPython: the language reference topics of `pydoc_data` (split at their section headings) and the
module docstrings of the standard library (read with `ast`, nothing is imported). Both are prose
written by people for people; code samples inside them are kept, as web text has them too.
"""
from __future__ import annotations

import ast
import hashlib
import os
import re
import sys
import sysconfig

_HEADING_UNDERLINE = re.compile(r"^([=*\-~^])\1{3,}$")


def _split_sections(title: str, text: str) -> list[tuple[str, str]]:
    """Cut a reference topic at its underlined headings into (name, body) sections."""
    lines = text.splitlines()
    starts = [0] + [i - 1 for i in range(1, len(lines)) if _HEADING_UNDERLINE.match(lines[i].strip())]
    starts = sorted(set(s for s in starts if s >= 0))
    sections = []
    for a, b in zip(starts, starts[1:] + [len(lines)]):
        body = "\n".join(lines[a:b]).strip()
        name = lines[a].strip() or title
        sections.append((f"{title}/{name}", body))
    return sections


def _reference_topics() -> list[tuple[str, str]]:
    from pydoc_data import topics

    out = []
    for title in sorted(topics.topics):
        out.extend(_split_sections(title, topics.topics[title]))
    return out


def _stdlib_docstrings() -> list[tuple[str, str]]:
    stdlib = sysconfig.get_paths()["stdlib"]
    out = []
    for name in sorted(sys.stdlib_module_names):
        for candidate in (os.path.join(stdlib, name + ".py"), os.path.join(stdlib, name, "__init__.py")):
            if not os.path.exists(candidate):
                continue
            with open(candidate, encoding="utf-8", errors="strict") as f:
                try:
                    doc = ast.get_docstring(ast.parse(f.read()))
                except (SyntaxError, UnicodeDecodeError):
                    doc = None
            if doc:
                out.append((f"stdlib/{name}", doc.strip()))
            break
    return out


def _pack(pieces: list[tuple[str, str]], max_chars: int) -> list[tuple[str, str]]:
    """Split long pieces at paragraph breaks so no document exceeds `max_chars`."""
    docs = []
    for name, text in pieces:
        paragraphs = text.split("\n\n")
        current: list[str] = []
        part = 0
        for para in paragraphs:
            if current and sum(len(p) + 2 for p in current) + len(para) > max_chars:
                docs.append((f"{name}#{part}", "\n\n".join(current)))
                current, part = [], part + 1
            current.append(para[:max_chars])
        if current:
            docs.append((f"{name}#{part}", "\n\n".join(current)))
    return docs


def python_docs(min_chars: int = 200, max_chars: int = 2000) -> list[dict]:
    """Documents {"id", "text"} in a fixed order; ids are stable across runs and machines."""
    pieces = _pack(_reference_topics() + _stdlib_docstrings(), max_chars)
    docs, seen = [], set()
    for name, text in pieces:
        if len(text) < min_chars or text in seen:
            continue
        seen.add(text)
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        docs.append({"id": f"{name}:{digest}", "text": text})
    return docs


def train_val_split(docs: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out a seeded, id-keyed subset: a doc's side never depends on the others."""
    def key(doc):
        return hashlib.sha256(f"{seed}:{doc['id']}".encode()).digest()

    threshold = int(val_fraction * 2**32)
    val = [d for d in docs if int.from_bytes(key(d)[:4], "big") < threshold]
    train = [d for d in docs if int.from_bytes(key(d)[:4], "big") >= threshold]
    return train, val
