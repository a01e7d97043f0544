"""Prompt templates and how a rendered prompt becomes token ids.

A template file holds a `[system]` section and a `[user]` section, each marker alone on its line;
a file without markers is all user message. Placeholders are `{name}` (literal braces: `{{`, `}}`):
`rephrase` templates take {document}, `latent_thought` templates take {prefix} and {suffix};
the knowledge methods' fields are in METHOD_FIELDS.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import string

from megadoc import fs

METHOD_FIELDS = {"rephrase": ("document",), "latent_thought": ("prefix", "suffix"),
                 "qa": ("document",), "focal_rewrite": ("document", "question"),
                 "entigraph_entities": ("document",),
                 "entigraph_relation": ("document", "entities")}
_SECTIONS = ("[system]", "[user]")
_TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")

# Llama 3 chat tokens; prompts use the chat format only when the tokenizer has all of them.
_BEGIN, _START, _END, _EOT = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                              "<|eot_id|>")


def builtin_template(method: str) -> str:
    """Path of the template shipped for a method."""
    if method not in METHOD_FIELDS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHOD_FIELDS)}")
    return os.path.join(_TEMPLATE_DIR, f"{method}.txt")


@dataclasses.dataclass(frozen=True)
class Template:
    name: str  # file stem and content hash, e.g. "rephrase@1a2b3c4d": recorded with each generation
    system: str | None
    user: str

    def render(self, **fields: str) -> tuple[str | None, str]:
        """(system, user) with the placeholders filled."""
        return self.system and self.system.format(**fields), self.user.format(**fields)


def load_template(path: str, method: str) -> Template:
    """Read and check a template: exactly the method's placeholders, or a ValueError naming
    the file and what was expected."""
    if method not in METHOD_FIELDS:
        raise ValueError(f"unknown method {method!r}; expected one of {sorted(METHOD_FIELDS)}")
    expected = set(METHOD_FIELDS[method])
    text = fs.read_text(path)
    system, user = _split_sections(path, text)
    used = set()
    for part in (system or "", user):
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(part)
                      if f is not None]
        except ValueError as e:
            raise ValueError(f"{path}: malformed placeholder ({e}); write literal braces as "
                             "{{ and }}") from None
        bad = [f for f, spec, conv in parsed if spec or conv or not f.isidentifier()]
        if bad:
            raise ValueError(f"{path}: placeholders must be plain {{name}}, got {bad}")
        used.update(f for f, _, _ in parsed)
    if used - expected:
        raise ValueError(f"{path}: unknown placeholder(s) {sorted(used - expected)} for method "
                         f"{method!r}; expected {sorted(expected)}")
    if expected - used:
        raise ValueError(f"{path}: missing placeholder(s) {sorted(expected - used)} for method "
                         f"{method!r}; expected {sorted(expected)}")
    stem = os.path.splitext(path.rstrip("/").rsplit("/", 1)[-1])[0]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    return Template(name=f"{stem}@{digest}", system=system, user=user)


def _split_sections(path: str, text: str) -> tuple[str | None, str]:
    lines = text.splitlines()
    marks = [(i, line.strip()) for i, line in enumerate(lines) if line.strip() in _SECTIONS]
    if not marks:
        if not text.strip():
            raise ValueError(f"{path}: template is empty")
        return None, text.strip()
    names = [m for _, m in marks]
    preamble = "\n".join(lines[:marks[0][0]]).strip()
    if names not in (["[user]"], ["[system]", "[user]"]) or preamble:
        raise ValueError(f"{path}: expected an optional [system] section then a [user] section, "
                         f"each marker on its own line; found {names}")
    bounds = [i for i, _ in marks] + [len(lines)]
    sections = {name: "\n".join(lines[a + 1:b]).strip()
                for (a, name), b in zip(marks, bounds[1:])}
    if not sections["[user]"]:
        raise ValueError(f"{path}: the [user] section is empty")
    return sections.get("[system]") or None, sections["[user]"]


def uses_chat_format(tokenizer) -> bool:
    return all(tokenizer.special_token_id(t) is not None for t in (_BEGIN, _START, _END, _EOT))


def encode(tokenizer, system: str | None, user: str) -> list[int]:
    """Prompt ids ending where the model's answer begins: the Llama 3 chat format (system and
    user turns, then the assistant header) when the tokenizer has its special tokens, else the
    plain text `system\\n\\nuser\\n\\n` after BOS (when the tokenizer has one)."""
    if uses_chat_format(tokenizer):
        start, end, eot = (tokenizer.special_token_id(t) for t in (_START, _END, _EOT))
        ids = [tokenizer.special_token_id(_BEGIN)]
        turns = ([("system", system)] if system else []) + [("user", user)]
        for role, content in turns:
            ids += [start, *tokenizer.encode(role), end, *tokenizer.encode("\n\n" + content), eot]
        return ids + [start, *tokenizer.encode("assistant"), end, *tokenizer.encode("\n\n")]
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    text = user if not system else system + "\n\n" + user
    return bos + tokenizer.encode(text + "\n\n")


def stop_tokens(tokenizer) -> tuple[int, ...]:
    """EOS plus the Llama 3 end-of-turn/end-of-message tokens where the tokenizer has them."""
    names = ("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>")
    ids = {tokenizer.eos_id} | {tokenizer.special_token_id(n) for n in names}
    return tuple(sorted(i for i in ids if i is not None))
