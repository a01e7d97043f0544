"""The one answer to "what model is at this path": a GGUF file, a Hugging Face Llama directory,
or a megadoc training workdir (its newest checkpoint, or a given step); and the tokenizer that
goes with it. `train --init`, the synthesis job's generator, benchmarks, qa_eval, the knowledge
pipeline and ensembles all load through here."""
from __future__ import annotations

import json

import jax

from megadoc import fs
from megadoc.data import store as store_lib
from megadoc.data import tokenizer as tokenizer_lib
from megadoc.models import gguf, hf, llama
from megadoc.train import checkpoint


def kind(path: str) -> str:
    """"gguf" | "hf" | "workdir", or a FileNotFoundError saying what was expected."""
    path = str(path).rstrip("/")
    if path.endswith(".gguf"):
        return "gguf"
    if fs.exists(checkpoint.directory(path)):  # a workdir's config.json is its run record
        return "workdir"
    if fs.exists(fs.join(path, hf.CONFIG)):
        return "hf"
    raise FileNotFoundError(f"{path}: expected a .gguf file, a Hugging Face directory (with "
                            f"{hf.CONFIG}) or a megadoc workdir (with checkpoints/)")


def load(path: str, mesh=None, step: int | None = None) -> tuple[llama.LlamaConfig, dict]:
    """(config, params); params in `param_shardings(config, mesh)` when a mesh is given. `step`:
    a workdir's checkpoint at that step (default: the newest)."""
    source = kind(path)
    if step is not None and source != "workdir":
        raise ValueError(f"{path}: a checkpoint step applies to a megadoc workdir, not a "
                         f"{source} model")
    if source == "hf":
        return hf.load(path, mesh)
    if source == "gguf":
        return gguf.load(path, mesh)
    config, params = checkpoint.load_params(path, step)
    if mesh is not None:
        params = jax.device_put(params, llama.param_shardings(config, mesh))
    return config, params


def load_config(path: str) -> llama.LlamaConfig:
    """The architecture alone (a GGUF file is read whole: its header reader is the GGUF
    module's business)."""
    source = kind(path)
    if source == "hf":
        where = fs.join(path, hf.CONFIG)
        return hf.config_from_hf(json.loads(fs.read_text(where)), where)
    if source == "workdir":
        where = fs.join(path, "config.json")
        return checkpoint.model_config_from_dict(json.loads(fs.read_text(where))["model"])
    return load(path)[0]


def tokenizer_path(path: str) -> str:
    """Where the model's tokenizer is: the GGUF file or HF directory itself; for a workdir, the
    tokenizer its training store was prepared with."""
    if kind(path) != "workdir":
        return path
    where = fs.join(path, "config.json")
    real = json.loads(fs.read_text(where))["data"]["real"]
    return store_lib.recorded_tokenizer_path(store_lib.open(real))


def load_tokenizer(path: str, override: str | None = None) -> tokenizer_lib.Tokenizer:
    """The model's tokenizer, or the one at `override`; for a workdir, checked against the
    fingerprint its training data recorded (another tokenizer's ids would mean other strings)."""
    tokenizer = tokenizer_lib.load(override or tokenizer_path(path))
    check_tokenizer(path, tokenizer)
    return tokenizer


def check_tokenizer(path: str, tokenizer) -> None:
    """For a workdir, refuse a tokenizer other than its training data's (checkpoint.py)."""
    if kind(path) == "workdir":
        checkpoint.check_tokenizer(path, tokenizer)


def tokenizer_fingerprint(path: str) -> str | None:
    """The fingerprint of the model's tokenizer (a workdir's: its training data's; None for a
    run that recorded none)."""
    if kind(path) == "workdir":
        return checkpoint.tokenizer_fingerprint(path)
    return load_tokenizer(path).fingerprint


def check_store(path: str, store: store_lib.WindowStore) -> None:
    """Refuse to put the model at `path` on a store tokenized by another tokenizer than the
    model's: the fingerprint the benchmarks check, not the vocabulary size (two tokenizers of
    one size give the same ids other meanings). A workdir's tokenizer is the one its training
    data was prepared with (from its run record; a run that recorded none is not checked)."""
    fingerprint = tokenizer_fingerprint(path)
    if fingerprint is not None:
        store_lib.check_fingerprint(store, fingerprint, f"the model {path}")
