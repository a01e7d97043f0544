"""Tokenizers behind one small interface: sentencepiece `.model`, Hugging Face `tokenizer.json`
and the vocabulary inside a `.gguf` file.

`encode` never adds BOS/EOS and never turns text into a special token; the prepare job joins
documents with `eos_id` itself. `encode_as_hf` is the other convention, Hugging Face's
`tokenizer.encode(text)`, which lm-evaluation-harness's HF backend scores with. `fingerprint`
hashes the model itself, so a window store can refuse a model trained with another vocabulary.
A tokenizer may carry its model's chat template (`chat_template`, a Jinja string, with
`template_tokens`, the special tokens' spellings it refers to); megadoc.synth.prompts renders it.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from typing import Iterable, Protocol

from megadoc import fs
from megadoc import gguf_file

# Tried in order when the tokenizer directory carries no tokenizer_config.json naming them.
_EOS_NAMES = ("<|end_of_text|>", "</s>", "<|endoftext|>", "<eos>")
_BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>")


class Tokenizer(Protocol):
    eos_id: int
    bos_id: int | None
    vocab_size: int
    fingerprint: str
    chat_template: str | None

    def encode(self, text: str) -> list[int]: ...

    def encode_as_hf(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def special_token_id(self, name: str) -> int | None: ...


class SentencePieceTokenizer:
    chat_template = None

    def __init__(self, model_bytes: bytes, path: str = "<bytes>"):
        import sentencepiece as spm

        self.path = path
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"{path}: not a sentencepiece model ({e})") from e
        self.fingerprint = "spm:" + hashlib.sha256(model_bytes).hexdigest()[:16]
        self.vocab_size = self._sp.vocab_size()
        if self._sp.eos_id() < 0:
            raise ValueError(f"{path}: sentencepiece model has no EOS piece (eos_id=-1)")
        self.eos_id = self._sp.eos_id()
        self.bos_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_as_hf(self, text: str) -> list[int]:
        """BOS, then the text with its spellings of BOS/EOS read as those tokens, as Hugging
        Face's sentencepiece Llama tokenizer splits text on its special tokens."""
        specials = {self._sp.id_to_piece(i): i for i in (self.bos_id, self.eos_id) if i is not None}
        pattern = "(" + "|".join(re.escape(p) for p in specials) + ")"
        ids = [] if self.bos_id is None else [self.bos_id]
        for chunk in re.split(pattern, text):
            ids += [specials[chunk]] if chunk in specials else self._sp.encode(chunk) if chunk else []
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def special_token_id(self, name: str) -> int | None:
        i = self._sp.piece_to_id(name)
        if i == self._sp.unk_id() and name != self._sp.id_to_piece(i):
            return None
        return i


class HFTokenizer:
    """A `tokenizers` tokenizer; `config` holds tokenizer_config.json's fields (eos_token,
    bos_token, chat_template, ...)."""

    def __init__(self, tokenizer_json: str, path: str = "<str>", config: dict | None = None):
        import tokenizers

        self.path = path
        try:
            self._tok = tokenizers.Tokenizer.from_str(tokenizer_json)
        except Exception as e:  # noqa: BLE001 — tokenizers raises a bare Exception
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e
        # Text that spells a special token ("<|end_of_text|>" in a web page) stays text; callers
        # that want a special token ask for its id (special_token_id).
        self._tok.encode_special_tokens = True
        self._hf_tok = tokenizers.Tokenizer.from_str(tokenizer_json)  # specials in text are specials
        spec = json.loads(tokenizer_json)
        self.special_tokens = tuple(t["content"] for t in spec.get("added_tokens") or ()
                                    if t.get("special"))
        canonical = json.dumps([spec["model"], spec.get("added_tokens")], sort_keys=True)
        self.fingerprint = "hf:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        config = config or {}
        self.eos_id = self._named_id(config.get("eos_token"), _EOS_NAMES)
        if self.eos_id is None:
            raise ValueError(f"{path}: no EOS token found (looked for {_EOS_NAMES})")
        self.bos_id = self._named_id(config.get("bos_token"), _BOS_NAMES)
        self.chat_template = _default_template(config.get("chat_template"))
        self.template_tokens = {name: _content(config.get(name)) for name in _TEMPLATE_TOKENS
                                if config.get(name)}

    def _named_id(self, configured, defaults) -> int | None:
        configured = _content(configured)
        for name in ([configured] if configured else []) + list(defaults):
            i = self._tok.token_to_id(name)
            if i is not None:
                return i
        return None

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_as_hf(self, text: str) -> list[int]:
        """With the post-processor's tokens (BOS for Llama tokenizers), special-token spellings in
        the text read as those tokens: what transformers' `tokenizer.encode(text)` returns."""
        return self._hf_tok.encode(text, add_special_tokens=True).ids

    def encode_with_special_tokens(self, text: str) -> list[int]:
        """Ids of text in which the special tokens' spellings are those tokens (a rendered chat
        template), as transformers' `apply_chat_template` tokenizes it (no post-processor)."""
        return self._hf_tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def special_token_id(self, name: str) -> int | None:
        return self._tok.token_to_id(name)


# Special tokens a chat template may refer to by name (transformers passes the same).
_TEMPLATE_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _content(token) -> str | None:
    """A token as tokenizer_config.json spells it: a string or {"content": ..., ...}."""
    return token.get("content") if isinstance(token, dict) else token


def _default_template(template) -> str | None:
    """tokenizer_config.json's chat_template: one string, or named ones (we use "default")."""
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template}
        return named.get("default")
    return template or None


def load(path: str) -> Tokenizer:
    """A sentencepiece `.model`, a `tokenizer.json`, a directory holding one of them (with its
    tokenizer_config.json and chat_template.jinja when present), or a `.gguf` file."""
    path = str(path).rstrip("/")
    if gguf_file.is_gguf(path):
        return _load_gguf(path)
    if path.endswith(".json"):
        return _load_hf(path, config_path=None)
    if path.endswith(".model"):
        return SentencePieceTokenizer(fs.read_bytes(path), path)
    names = fs.listdir(path)
    if not names and not fs.exists(path):
        raise FileNotFoundError(f"{path}: no such tokenizer file or directory")
    if "tokenizer.json" in names:
        config = fs.join(path, "tokenizer_config.json") if "tokenizer_config.json" in names else None
        template = fs.join(path, CHAT_TEMPLATE_FILE) if CHAT_TEMPLATE_FILE in names else None
        return _load_hf(fs.join(path, "tokenizer.json"), config, template)
    models = [n for n in names if n.endswith(".model")]
    if len(models) == 1:
        return SentencePieceTokenizer(fs.read_bytes(fs.join(path, models[0])), fs.join(path, models[0]))
    raise ValueError(
        f"{path}: expected a sentencepiece .model, a tokenizer.json, a .gguf file, or a directory "
        f"holding exactly one of the first two; found {names[:20]}"
    )


def _load_hf(path: str, config_path: str | None, template_path: str | None = None) -> HFTokenizer:
    try:
        config = json.loads(fs.read_text(config_path)) if config_path else {}
    except ValueError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from e
    if template_path:  # newer checkpoints keep the template in its own file
        config["chat_template"] = fs.read_text(template_path)
    return HFTokenizer(fs.read_text(path), path, config)


def _load_gguf(path: str) -> HFTokenizer:
    from megadoc.data import gguf_vocab

    tokenizer_json, config = gguf_vocab.tokenizer_from_gguf(path)
    return HFTokenizer(tokenizer_json, path, config)


def train_sentencepiece(texts: Iterable[str], vocab_size: int, output_path: str) -> str:
    """Train a BPE model whose encode/decode round-trips any text exactly; writes `output_path`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_lines(texts),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        byte_fallback=True,
        user_defined_symbols=["\n", "\t"],
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        input_sentence_size=2_000_000,
        shuffle_input_sentence=True,
        minloglevel=2,
    )
    fs.write_bytes(output_path, model.getvalue())
    return output_path


def _lines(texts: Iterable[str]):
    """Lines keep their newline; "\n" is a user symbol, so no piece spans lines anyway."""
    for text in texts:
        yield from text.splitlines(keepends=True)
