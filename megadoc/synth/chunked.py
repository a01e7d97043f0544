"""Chunk-wise rewriting of documents too long for one rephrase prompt.

A document is too long when its prompt plus `max_new_tokens` exceeds the generator's context:
the rephrase could not be written whole (it would stop at the end of the context) and nothing
is ever cut silently. Such a document is rewritten chunk by chunk, each chunk conditioned on
the rewritten text so far, and the pieces are stitched into one record (K2's chunk-wise
autoregressive rewriting):

- chunk size, from the context: half of what is left of it after `max_new_tokens` and the
  larger of the two prompts' own tokens (the rephrase template, the continuation template
  templates/rephrase_continue.txt); the other half holds the end of the rewrite so far;
- chunks end at a paragraph break, else a line break, a sentence end or a space in their
  second half, else at the token limit;
- chunk 0 is prompted with the sample's rephrase template; chunk j with the continuation
  template: the last tokens of the rewrite so far that fit, then chunk j;
- the record's text is the pieces joined by blank lines, and its `chunks` field lists, for
  each chunk, its source span, its span in the text and why its generation ended; the record
  ends "length" when any chunk did.

A context too small to hold a chunk of MIN_CHUNK_TOKENS gives "prompt_too_long", as a
document that fits no prompt does.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Iterator

from megadoc.synth import sampler as sampler_lib
from megadoc.synth import split

MIN_CHUNK_TOKENS = 16
_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?][\"')\]]*\s"),
           re.compile(r"\s"))


@dataclasses.dataclass(frozen=True)
class Item:
    """One sample of a long document to rewrite chunk-wise."""
    tag: object  # returned with the result (the job's Origin)
    doc_key: int  # the document's random stream
    sample: int
    text: str
    template: object  # prompts.Template of the first chunk


@dataclasses.dataclass(frozen=True)
class Result:
    item: Item
    text: str
    finish_reason: str
    chunks: list[dict]
    generated_tokens: int


def too_long(prompt_len: int, max_new_tokens: int, context: int) -> bool:
    return prompt_len + max_new_tokens > context


def chunk_tokens(gen, templates, continue_template, max_new_tokens: int, chat_date: str) -> int:
    """Source tokens per chunk: half the context left after the generation and the prompt."""
    overhead = max([len(gen.encode_prompt(*t.render(document=""), chat_date)) for t in templates]
                   + [len(gen.encode_prompt(*continue_template.render(previous="", document=""),
                                            chat_date))])
    return (gen.config.max_seq_len - max_new_tokens - overhead) // 2


def source_spans(tokenizer, text: str, max_tokens: int) -> list[tuple[int, int]]:
    """Character spans covering `text` in order, each of at most about `max_tokens` tokens (as
    encoded alone; a cut moves a few tokens to land on a character boundary), ending at a
    natural break where one lies in the span's second half."""
    spans, start = [], 0
    while start < len(text):
        ids = tokenizer.encode(text[start:])
        if len(ids) <= max_tokens:
            spans.append((start, len(text)))
            break
        cut = start + split.char_offset(tokenizer, text[start:], ids, max_tokens)
        end = _natural_end(text, start + (cut - start) // 2, cut)
        end = end if end > start else max(cut, start + 1)
        spans.append((start, end))
        start = end
    return spans


def _natural_end(text: str, lo: int, hi: int) -> int:
    for pattern in _BREAKS:
        ends = [m.end() for m in pattern.finditer(text, lo, hi)]
        if ends:
            return ends[-1]
    return hi


@dataclasses.dataclass
class _Rewrite:
    item: Item
    spans: list[tuple[int, int]]
    pieces: list[str] = dataclasses.field(default_factory=list)
    reasons: list[str] = dataclasses.field(default_factory=list)
    tokens: int = 0
    failed: bool = False

    def done(self) -> bool:
        return self.failed or len(self.pieces) == len(self.spans)

    def so_far(self) -> str:
        return "\n\n".join(p for p in self.pieces if p)


def _chunk_key(doc_key: int, chunk: int) -> int:
    digest = hashlib.sha256(f"{doc_key}\0chunk\0{chunk}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _prompt(gen, w: _Rewrite, continue_template, max_new_tokens: int, chat_date: str
            ) -> list[int]:
    """Chunk j's prompt: the template over the chunk, and for j > 0 as much of the end of the
    rewrite so far as the context holds."""
    j = len(w.pieces)
    a, b = w.spans[j]
    chunk = w.item.text[a:b]
    if j == 0:
        return gen.encode_prompt(*w.item.template.render(document=chunk), chat_date)
    room = gen.config.max_seq_len - max_new_tokens - len(
        gen.encode_prompt(*continue_template.render(previous="", document=chunk), chat_date))
    ids = gen.tokenizer.encode(w.so_far())
    while True:  # the tail's tokens may merge differently inside the prompt: shrink till it fits
        tail = gen.tokenizer.decode(ids[max(0, len(ids) - room):]) if room > 0 else ""
        prompt = gen.encode_prompt(*continue_template.render(previous=tail, document=chunk),
                                   chat_date)
        over = len(prompt) + max_new_tokens - gen.config.max_seq_len
        if over <= 0 or room <= 0:
            return prompt
        room -= over


def rewrite(sampler: sampler_lib.Sampler, gen, items: list[Item], continue_template,
            max_new_tokens: int, max_tokens: int, chat_date: str) -> Iterator[Result]:
    """Rewrites every item chunk by chunk, all items' chunk j in one sampler pass; yields each
    item's stitched result when its last chunk is done. Prompts print `chat_date` (the job's)."""
    if max_tokens < MIN_CHUNK_TOKENS:
        for item in items:
            yield Result(item, "", sampler_lib.FINISH_TOO_LONG, [], 0)
        return
    active = [_Rewrite(item, source_spans(gen.tokenizer, item.text, max_tokens))
              for item in items]
    while active:
        requests = [sampler_lib.Request(_prompt(gen, w, continue_template, max_new_tokens,
                                                chat_date),
                                        _chunk_key(w.item.doc_key, len(w.pieces)),
                                        first_sample=w.item.sample, tag=i)
                    for i, w in enumerate(active)]
        for c in sampler.run(requests):
            w = active[c.request.tag]
            w.failed |= c.finish_reason == sampler_lib.FINISH_TOO_LONG
            w.pieces.append(gen.tokenizer.decode(c.tokens).strip() if c.tokens else "")
            w.reasons.append(c.finish_reason)
            w.tokens += len(c.tokens)
        for w in active:
            if w.done():
                yield _stitched(w)
        active = [w for w in active if not w.done()]


def _stitched(w: _Rewrite) -> Result:
    if w.failed:
        return Result(w.item, "", sampler_lib.FINISH_TOO_LONG, [], w.tokens)
    text, chunks = "", []
    for (a, b), piece, reason in zip(w.spans, w.pieces, w.reasons):
        if text and piece:
            text += "\n\n"
        chunks.append({"source_start": a, "source_end": b, "text_start": len(text),
                       "text_end": len(text) + len(piece), "finish_reason": reason})
        text += piece
    reason = next((r for r in (sampler_lib.FINISH_REPETITION, sampler_lib.FINISH_LENGTH)
                   if r in w.reasons), sampler_lib.FINISH_STOP)
    return Result(w.item, text, reason, chunks, w.tokens)
