"""The tokenizer a GGUF file describes, rebuilt with `tokenizers` from its vocabulary, merges and
token types (`tokenizer.ggml.*` metadata), as transformers builds it for `gguf_file=`:

- `gpt2`: byte-level BPE (GPT-2's pre-tokenizer, or Llama 3's split for its `tokenizer.ggml.pre`
  names), byte-level decoder;
- `llama`: SentencePiece-style BPE with byte fallback over "▁"-spelled spaces; merges from the
  file, or derived from the token scores when it has none.

Control tokens become special tokens (matched whole only in a rendered chat template),
user-defined ones plain added tokens.
"""
from __future__ import annotations

from megadoc import gguf_file

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
_LLAMA3_PRE = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPECIAL_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's printable spelling of each byte: printable Latin-1 bytes stand for themselves,
    the others take the code points from 256 up, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    spelling, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelling[b] = chr(b)
        else:
            spelling[b] = chr(256 + extra)
            extra += 1
    return spelling


def _score_merges(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece merges implied by the vocabulary: every split of a token into two tokens,
    the best-scored result first (ties: longer left piece, then longer right piece)."""
    ids = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores):
        pieces = [(token[:k], token[k:]) for k in range(1, len(token))]
        pieces = sorted((p for p in pieces if p[0] in ids and p[1] in ids),
                        key=lambda p: (ids[p[0]], ids[p[1]]))
        merges += [(score, left, right) for left, right in pieces]
    merges.sort(key=lambda m: (-m[0], -len(m[1]), -len(m[2])))
    return [(left, right) for _, left, right in merges]


def tokenizer_from_gguf(path: str) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config-style dict with the special tokens and the chat
    template) of a GGUF file."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    with gguf_file.open_reader(path) as reader:
        def get(key, *default):
            return gguf_file.field(reader, f"tokenizer.{key}", *default, path=path)

        kind = get("ggml.model")
        tokens = list(get("ggml.tokens"))
        types = list(get("ggml.token_type", [])) or [1] * len(tokens)
        merges = [tuple(m.split(" ", 1)) for m in get("ggml.merges", [])]
        scores = list(get("ggml.scores", []))
        pre = get("ggml.pre", "default")
        prefix_space = bool(get("ggml.add_space_prefix", True))
        config = {name: tokens[i] for name, key in _SPECIAL_IDS.items()
                  if (i := get(f"ggml.{key}", None)) is not None}
        config["chat_template"] = get("chat_template", None)

    if kind == "gpt2":
        spelling = byte_alphabet()
        alphabet = set(spelling.values())
        vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
                 for i, t in enumerate(tokens)}
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False))
        if pre in _LLAMA3_PRE:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        # A "control" token spelled outside the byte alphabet is a mislabelled vocabulary entry.
        is_control = [ty == CONTROL and set(t) <= alphabet for t, ty in zip(tokens, types)]
    elif kind == "llama":
        if not merges and len(scores) != len(tokens):
            raise ValueError(f"{path}: a 'llama' vocabulary needs merges or one score per token")
        vocab = {t: i for i, t in enumerate(tokens)}
        unk = config.get("unk_token")
        tok = Tokenizer(models.BPE(vocab, merges or _score_merges(tokens, scores), unk_token=unk,
                                   fuse_unk=True, byte_fallback=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first" if prefix_space else "never", split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        tok.decoder = decoders.Sequence(steps + [decoders.Strip(" ", 1, 0)] * prefix_space)
        is_control = [ty == CONTROL for ty in types]
    else:
        raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} is not supported; expected "
                         "'gpt2' (byte-level BPE) or 'llama' (SentencePiece-style)")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, c in zip(tokens, is_control) if c])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in vocab])
    return tok.to_str(), config
