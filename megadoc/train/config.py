"""Training configuration: frozen dataclasses, and the papers' settings as named presets."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from megadoc.models import llama


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with clipping and a cosine schedule (see optimizer.py)."""
    lr: float
    """peak learning rate"""
    weight_decay: float
    """decoupled weight decay, multiplied by the learning rate"""
    warmup_frac: float = 0.01
    """fraction of the steps spent in linear warmup"""
    b1: float = 0.9
    """Adam's first-moment decay"""
    b2: float = 0.95
    """Adam's second-moment decay"""
    eps: float = 1e-8
    """Adam's epsilon"""
    clip_norm: float = 1.0
    """global gradient-norm clip"""
    no_decay: tuple[str, ...] = ("embed", "norm")
    """substrings of param paths that get no weight decay (Levanter's default: embedding, norms)"""

    def __post_init__(self):
        _check(self, lr=_positive, weight_decay=_non_negative, warmup_frac=_fraction,
               b1=_fraction, b2=_fraction, eps=_non_negative, clip_norm=_positive)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The stores a run trains on and the order it reads them in."""
    real: str
    """window store of real documents"""
    synthetic: str | None = None
    """window store of synthetic documents (megadocs)"""
    mix: float = 0.0
    """fraction of each global batch taken from the synthetic store (1: the synthetic store
    alone; the real store then only names the tokenizer and the i.i.d. validation split)"""
    epochs: int = 1
    """passes over the real store (over the synthetic store when mix is 1)"""
    seed: int = 0
    """seed of the data order and the model init"""
    global_batch: int = 64
    """windows per step"""

    def __post_init__(self):
        _check(self, mix=_unit_interval, epochs=_at_least_one, global_batch=_at_least_one)
        if self.synthetic and self.mix == 0:
            raise ValueError(f"synthetic store {self.synthetic} given with mix 0: it would never "
                             f"be read; set the fraction of each batch it supplies (--mix)")
        if self.mix > 0 and not self.synthetic:
            raise ValueError(f"mix={self.mix} needs a synthetic store (--synthetic)")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: model, data, optimizer, and how it is laid out, saved and logged."""
    model: llama.LlamaConfig
    """the model trained"""
    data: DataConfig
    """what it trains on"""
    optimizer: OptimizerConfig
    """how it is updated"""
    workdir: str
    """output directory (local or gs://): checkpoints, metrics, summary"""
    microbatches: int = 0
    """gradient-accumulation slices per step (0: the fewest that leave each device at most
    rows_per_device rows of a slice, on the mesh the run gets)"""
    rows_per_device: int = 0
    """with microbatches 0: the most rows of a slice one device holds (0: the whole batch in
    one slice)"""
    mesh: tuple[int, int, int] = (1, -1, 1)
    """mesh shape data,fsdp,tensor (-1: the remaining devices)"""
    val: tuple[tuple[str, str], ...] = ()
    """validation sets: a name and a window store or JSONL/Parquet documents (documents are also
    scored as NAME_short / NAME_long halves by tokenized length)"""
    eval_every: int = 0
    """evaluate every N steps (and at the end); 0 = at the end only"""
    eval_batch_size: int = 0
    """eval windows per batch (0 = the global batch); rounded up to fill every batch shard of
    the mesh"""
    checkpoint_every_steps: int = 0
    """checkpoint every N steps (0 = off)"""
    checkpoint_every_minutes: float = 30.0
    """checkpoint every N minutes (0 = off)"""
    keep_checkpoints: int = 2
    """checkpoints kept (the newest); a damaged newest one is skipped for the newest intact
    one, so keeping 2 or more leaves one to fall back on"""
    log_every: int = 10
    """progress line every N steps (metrics.jsonl gets every step)"""
    peak_flops: float = 0.0
    """peak FLOP/s per device, for MFU (0 = the known accelerator peak, or measured)"""
    init: str | None = None
    """continued pre-training: start from this .gguf file, Hugging Face Llama directory or
    megadoc workdir, with its architecture"""

    def __post_init__(self):
        _check(self, microbatches=_non_negative, rows_per_device=_non_negative,
               eval_every=_non_negative,
               eval_batch_size=_non_negative, checkpoint_every_steps=_non_negative,
               checkpoint_every_minutes=_non_negative, keep_checkpoints=_at_least_one,
               log_every=_non_negative, peak_flops=_non_negative)
        if self.microbatches and self.data.global_batch % self.microbatches:
            raise ValueError(f"global_batch {self.data.global_batch} is not a multiple of "
                             f"microbatches {self.microbatches}")
        if len(self.mesh) != 3 or any(d != -1 and d < 1 for d in self.mesh) \
                or list(self.mesh).count(-1) > 1:
            raise ValueError(f"mesh {self.mesh}: three sizes data,fsdp,tensor, each >= 1 or one "
                             "of them -1 (the remaining devices)")
        names = [name for name, _ in self.val]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"val: each validation set needs its own non-empty name, got {names}")


# Range checks of config fields: (test, what the value must be).
_positive = (lambda v: v > 0, "> 0")
_non_negative = (lambda v: v >= 0, ">= 0")
_at_least_one = (lambda v: v >= 1, ">= 1")
_fraction = (lambda v: 0 <= v < 1, "in [0, 1)")
_unit_interval = (lambda v: 0 <= v <= 1, "in [0, 1]")


def _check(config: Any, **rules: tuple) -> None:
    """Raises ValueError naming the first field outside its range (None means "unset")."""
    for name, (ok, expected) in rules.items():
        value = getattr(config, name)
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise ValueError(f"{type(config).__name__}.{name} must be {expected}, got {value}")


# Fields that may change between a run and its resume without changing what is trained.
RESUMABLE_FIELDS = ("workdir", "mesh", "microbatches", "rows_per_device", "val", "eval_every",
                    "eval_batch_size", "checkpoint_every_steps", "checkpoint_every_minutes", "keep_checkpoints",
                    "log_every", "peak_flops", "data.real", "data.synthetic", "model.remat",
                    "model.attention")


@dataclasses.dataclass(frozen=True)
class Preset:
    """A paper setting: model size, global batch, optimizer defaults, accumulation, remat.
    The context length is the stores' (the papers prepare them with seq_len 4096). The
    accumulation is rows per device, not a count of microbatches: the count follows from the
    mesh (`microbatches_for`), so one preset fits a v4-8 and a v4-64 alike."""
    model: str | None  # None: the architecture of the model training starts from (--init)
    global_batch: int
    lr: float
    weight_decay: float
    rows_per_device: int = 0
    remat: str = "none"
    warmup_frac: float = 0.01


# The papers train every size with batch 64 × 4096 (prepare stores with --seq_len=4096). lr and
# wd are each size's real-only optimum (Marin experiments/data_efficiency/
# synth_data_regularized_baselines.py), overridden by --lr and --weight_decay and by the
# experiment modules. Rows per device and remat fit 32 GiB chips (v4) from a v4-8 (microbatches 4
# or 8) to a v4-64 (1), as `python -m experiments.plan` compiles them (README); change them
# freely (resumable).
PRESETS = {
    "tiny": Preset("tiny", 8, lr=3e-3, weight_decay=0.1),
    "150m": Preset("150m", 64, lr=3e-3, weight_decay=0.8, rows_per_device=4, remat="dots"),
    "300m": Preset("300m", 64, lr=3e-3, weight_decay=1.6, rows_per_device=4, remat="dots"),
    "600m": Preset("600m", 64, lr=1e-3, weight_decay=3.2, rows_per_device=2, remat="full"),
    "1.5b": Preset("1.5b", 64, lr=1e-3, weight_decay=3.2, rows_per_device=2, remat="full"),
    # Continued pre-training of a pre-trained model on a small corpus (EntiGraph's CPT: batch 16
    # of 2,048-token blocks, lr 5e-6, wd 0.01, 5% warmup, cosine, 2 epochs; the knowledge
    # papers replay 10% generic text: --synthetic=GENERIC --mix=0.1).
    "cpt": Preset(None, 16, lr=5e-6, weight_decay=0.01, warmup_frac=0.05),
}


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown training preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def check_batch_split(global_batch: int, microbatches: int, batch_shards: int) -> None:
    """Raises ValueError, naming the numbers to change, unless every microbatch splits evenly
    over the mesh's batch shards. (A slice of fewer rows than shards would not be refused by
    XLA: it would be replicated, every device computing the whole slice.)"""
    if global_batch % microbatches:
        raise ValueError(f"global_batch {global_batch} is not a multiple of microbatches "
                         f"{microbatches}: use microbatches from {_divisors(global_batch)}")
    rows = global_batch // microbatches
    if rows % batch_shards:
        fits = [m for m in _divisors(global_batch) if (global_batch // m) % batch_shards == 0]
        hint = (f"microbatches from {fits}" if fits else
                f"a global_batch that is a multiple of {batch_shards}")
        raise ValueError(
            f"a microbatch of {rows} rows (global_batch {global_batch} / microbatches "
            f"{microbatches}) does not split over the mesh's {batch_shards} batch shards "
            f"(data x fsdp): use {hint}, or a mesh with fewer batch shards (--mesh)")


def microbatches_for(global_batch: int, batch_shards: int, rows_per_device: int) -> int:
    """The fewest microbatches that split over `batch_shards` with at most `rows_per_device`
    rows per device each (rows_per_device 0: one)."""
    check_batch_split(global_batch, 1, batch_shards)
    if not rows_per_device:
        return 1
    return next(m for m in _divisors(global_batch)
                if (global_batch // m) % batch_shards == 0
                and global_batch // m // batch_shards <= rows_per_device
                or global_batch // m == batch_shards)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def to_dict(config: Any) -> Any:
    """JSON-ready dict of a (nested) config dataclass; tuples become lists."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    return config


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differing_fields(saved: dict, current: dict) -> list[str]:
    """Names of fields (dotted) whose values differ, ignoring those a resume may change."""
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]
