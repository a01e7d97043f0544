"""A generator model: weights and tokenizer (with its chat template) from wherever
`train.pretrained` finds them (a GGUF file, a Hugging Face Llama directory, a megadoc workdir),
and the tokens that stop a generation."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import jax
import numpy as np

from megadoc import fs
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import llama
from megadoc.synth import prompts
from megadoc.train import pretrained


@dataclasses.dataclass(frozen=True)
class Generator:
    name: str  # the directory's or file's base name, recorded with each generation
    config: llama.LlamaConfig
    params: dict
    tokenizer: tokenizer_lib.Tokenizer
    stop_tokens: tuple[int, ...]

    def encode_prompt(self, system: str | None, user: str, date: str = prompts.CHAT_DATE
                      ) -> list[int]:
        return prompts.encode(self.tokenizer, system, user, date)


def _has_tokenizer(names: list[str]) -> bool:
    return "tokenizer.json" in names or any(n.endswith(".model") for n in names)


def load(path: str, mesh=None) -> Generator:
    """The model at `path` (see train/pretrained.py), params in their sharding on `mesh` when
    given; a Hugging Face directory must hold its tokenizer (tokenizer.json or a sentencepiece
    .model), a workdir's is the one its training store was prepared with. Stop tokens: the
    tokenizer's EOS and its chat template's end-of-turn token, plus the eos ids of a directory's
    generation_config.json."""
    path = str(path).rstrip("/")
    source = pretrained.kind(path)
    names = fs.listdir(path) if source == "hf" else []
    if source == "hf" and not _has_tokenizer(names):
        raise ValueError(f"{path}: generator directory has no tokenizer (expected tokenizer.json "
                         f"or a sentencepiece .model next to config.json); found {names[:20]}")
    tokenizer = pretrained.load_tokenizer(path)
    config, params = pretrained.load(path, mesh)
    stop = set()
    if "generation_config.json" in names:
        eos = json.loads(fs.read_text(fs.join(path, "generation_config.json"))).get("eos_token_id")
        stop.update([eos] if isinstance(eos, int) else eos or [])
    return _generator(path, config, params, tokenizer, stop)


def _generator(path, config, params, tokenizer, extra_stop: set) -> Generator:
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{path}: tokenizer has {tokenizer.vocab_size} ids but the model's "
                         f"vocab_size is {config.vocab_size}")
    stop = extra_stop | set(prompts.stop_tokens(tokenizer))
    return Generator(name=path.rsplit("/", 1)[-1], config=config, params=params,
                     tokenizer=tokenizer, stop_tokens=tuple(sorted(stop)))


def digest(config: llama.LlamaConfig, params) -> str:
    """A short fingerprint of a model's weights and config (every tensor's shape and an evenly
    strided sample of ~4k of its values), recorded with the records it produced: cheap for an
    8B model, and any retrained or re-quantized copy differs."""
    h = hashlib.sha256(repr(config).encode())
    for path, x in sorted(jax.tree_util.tree_leaves_with_path(params),
                          key=lambda kv: jax.tree_util.keystr(kv[0])):
        flat = x.reshape(-1)
        sample = np.asarray(jax.device_get(flat[::max(1, flat.size // 4096)]), np.float32)
        h.update(f"{jax.tree_util.keystr(path)}{x.shape}".encode() + sample.tobytes())
    return h.hexdigest()[:16]
