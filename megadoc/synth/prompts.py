"""Prompt templates, and how a rendered prompt becomes token ids through the model's own chat
template.

A template file holds a `[system]` section and a `[user]` section, each marker alone on its line;
a file without markers is all user message. Placeholders are `{name}` (literal braces: `{{`, `}}`):
each method's are its `prompt_fields` in data/methods.py (`rephrase` takes {document},
`latent_thoughts` {prefix} and {suffix}); a method's continuation template (the next chunk of a
long document: synth/chunked.py) takes methods.CONTINUATION_FIELDS, {previous} and {document}.

Chat templates are the model's own Jinja template (a GGUF's `tokenizer.chat_template`, a Hugging
Face directory's tokenizer_config.json or chat_template.jinja), rendered as transformers'
`apply_chat_template` renders it: a sandboxed environment with trim_blocks and lstrip_blocks,
`raise_exception`, `strftime_now`, the special tokens by name; the text is then tokenized with the
special tokens' spellings as those tokens. `strftime_now` formats a given date (CHAT_DATE unless the
caller passes one), never the wall clock: the same prompt on another day is the same ids.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import string

import jinja2
import jinja2.ext
import jinja2.sandbox

from megadoc import fs
from megadoc.data import methods as methods_lib

_SECTIONS = ("[system]", "[user]")
_TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")
# The date a chat template prints (Llama 3.1's "Today Date"): the release date of Llama 3.1.
CHAT_DATE = "2024-07-23"

def builtin_template(method: str, continuation: bool = False) -> str:
    """Path of the template shipped for a method (or its continuation template)."""
    spec = methods_lib.get(method)
    template = spec.continuation if continuation else spec.template
    if template is None:
        raise ValueError(f"method {method!r} is not prompted with a "
                         f"{'continuation ' if continuation else ''}template")
    return os.path.join(_TEMPLATE_DIR, template)


@dataclasses.dataclass(frozen=True)
class Template:
    name: str  # file stem and content hash, e.g. "rephrase@1a2b3c4d": recorded with each generation
    system: str | None
    user: str

    def render(self, **fields: str) -> tuple[str | None, str]:
        """(system, user) with the placeholders filled."""
        return self.system and self.system.format(**fields), self.user.format(**fields)


def load_template(path: str, method: str, continuation: bool = False) -> Template:
    """Read and check a template: exactly the method's placeholders (a continuation template:
    methods.CONTINUATION_FIELDS), or a ValueError naming the file and what was expected."""
    expected = set(methods_lib.CONTINUATION_FIELDS if continuation
                   else methods_lib.get(method).prompt_fields)
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


def encode(tokenizer, system: str | None, user: str, date: str = CHAT_DATE) -> list[int]:
    """Prompt ids ending where the model's answer begins: the tokenizer's chat template over a
    system (when given) and a user message, else the plain text `system\n\nuser\n\n` after
    BOS (when the tokenizer has one). `date` (YYYY-MM-DD) is the one a chat template prints."""
    if tokenizer.chat_template:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": user}]
        return apply_chat_template(tokenizer, messages, date=date)
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    text = user if not system else system + "\n\n" + user
    return bos + tokenizer.encode(text + "\n\n")


def apply_chat_template(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                        date: str = CHAT_DATE) -> list[int]:
    """Ids of `messages` ([{"role": ..., "content": ...}]) in the tokenizer's chat template, as
    transformers' `apply_chat_template(..., tokenize=True)` gives them. A message that spells one
    of the special tokens is a ValueError: in the rendered text it would become a control token."""
    if not tokenizer.chat_template:
        raise ValueError(f"{getattr(tokenizer, 'path', tokenizer)}: the tokenizer has no chat "
                         "template (tokenizer.chat_template in a GGUF, chat_template in "
                         "tokenizer_config.json, or chat_template.jinja)")
    for i, message in enumerate(messages):
        spelled = [t for t in tokenizer.special_tokens if t in message["content"]]
        if spelled:
            raise ValueError(f"message {i} ({message['role']}) contains the special token "
                             f"{spelled[0]!r} as text; the chat template would turn it into that "
                             "control token")
    return tokenizer.encode_with_special_tokens(_render(tokenizer, messages, add_generation_prompt,
                                                        date))


def _render(tokenizer, messages, add_generation_prompt, date: str = CHAT_DATE) -> str:
    day = datetime.date.fromisoformat(date)
    return _compiled(tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
        documents=None, strftime_now=day.strftime, **tokenizer.template_tokens)


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def _compiled(template: str) -> jinja2.Template:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def end_of_turn_token(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message (ChatML's
    <|im_end|>, Llama 3's <|eot_id|>), or None without a template or such a token."""
    if not tokenizer.chat_template:
        return None
    probe = "megadoc-end-of-turn-probe"
    try:
        text = _render(tokenizer, [{"role": "user", "content": "x"},
                                   {"role": "assistant", "content": probe}], False)
    except jinja2.exceptions.TemplateError:
        return None
    after = text[text.index(probe) + len(probe):] if probe in text else ""
    ids = tokenizer.encode_with_special_tokens(after)[:1]
    special = {tokenizer.special_token_id(t) for t in tokenizer.special_tokens}
    return ids[0] if ids and ids[0] in special else None


def stop_tokens(tokenizer) -> tuple[int, ...]:
    """The model's EOS plus the chat template's end-of-turn token."""
    ids = {tokenizer.eos_id, end_of_turn_token(tokenizer)}
    return tuple(sorted(i for i in ids if i is not None))
