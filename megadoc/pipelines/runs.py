"""One training run as the commands state it, and the one way a pipeline starts it.

A run's settings come as flat names (the flags of `experiments.train`: `preset`, `init`,
`workdir`, `real`, `lr`, ...): `train_config` turns them into a `TrainConfig` with the preset
filling what is unset and the model's vocabulary and context read from the real store (or, with
`init`, the pre-trained model's architecture). `train` runs it in this process and turns a
preemption into the typed `Preempted`; a non-finite loss is the loop's `Diverged`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from absl import app, flags

from megadoc import cli
from megadoc.models import llama
from megadoc.train import config, loop

Diverged = loop.Diverged
PRESET_FILLED = "the preset's"


class Preempted(Exception):
    """The run saved its state on SIGTERM and stopped; rerunning the same job resumes it."""
    exit_code = 143  # 128 + SIGTERM: the scheduler sees a preempted, resumable job

    def __init__(self, workdir: str, step: int):
        super().__init__(f"{workdir}: preempted at step {step}; rerun to resume")
        self.workdir, self.step = workdir, step


def train(cfg: config.TrainConfig, objective=None) -> dict:
    """`loop.train(cfg, objective)`'s summary of a finished run; raises `Preempted` or
    `Diverged` for a run that stopped early."""
    summary = loop.train(cfg, objective)
    if summary["status"] == "preempted":
        raise Preempted(cfg.workdir, summary["step"])
    return summary


@dataclasses.dataclass(frozen=True)
class Launch:
    """How a command starts its run: the preset that fills what is unset, and the hosts."""
    preset: str = "tiny"
    """training preset: the papers' model sizes, or cpt (the default when --init is given)"""
    distributed: bool = False
    """call jax.distributed.initialize() (multi-host: every host runs the same command)"""
    coordinator_address: str | None = None
    """host:port of process 0 (with --distributed)"""
    num_processes: int | None = None
    """number of processes (with --distributed)"""
    process_id: int | None = None
    """this process's index (with --distributed)"""

    def initialize(self) -> None:
        if self.distributed:
            import jax

            jax.distributed.initialize(coordinator_address=self.coordinator_address,
                                       num_processes=self.num_processes,
                                       process_id=self.process_id)


def define_flags(flag_values: flags.FlagValues) -> None:
    """Every field of a TrainConfig as a flag (megadoc.cli's convention), and the `Launch`
    ones; lr, weight_decay, global_batch, rows_per_device and remat default to the preset's
    (the microbatches follow from rows_per_device and the mesh)."""
    cli.define_fields(Launch, flag_values, choices={"preset": config.PRESETS})
    cli.define_fields(config.TrainConfig, flag_values, skip=("model", "data", "optimizer"),
                      filled={"rows_per_device": PRESET_FILLED})
    cli.define_fields(config.DataConfig, flag_values, filled={"global_batch": PRESET_FILLED})
    cli.define_fields(config.OptimizerConfig, flag_values,
                      only=("lr", "weight_decay", "warmup_frac"), aliases={"warmup_frac": "warmup"},
                      filled={"lr": PRESET_FILLED, "weight_decay": PRESET_FILLED,
                              "warmup_frac": PRESET_FILLED})
    cli.define_fields(llama.LlamaConfig, flag_values, only=("remat", "cross_document_attention"),
                      filled={"remat": PRESET_FILLED}, choices={"remat": llama.REMAT_POLICIES})


def flag_settings(f: flags.FlagValues, config_class=config.TrainConfig) -> dict:
    """The run settings the flags give: every flag of `define_flags` (and of `config_class`)
    with a value, typed; the preset becomes cpt for --init unless --preset was given."""
    values = {"preset": f.preset, "init": f.init, "remat": f.remat,
              "cross_document_attention": f.cross_document_attention}
    for cls in (config_class, config.DataConfig, config.OptimizerConfig):
        values |= cli.field_values(cls, f)
    if f.init and not f["preset"].present:
        values["preset"] = "cpt"
    return {k: v for k, v in values.items() if v is not None}


def train_config(settings: Mapping[str, Any], config_class=config.TrainConfig):
    """The `config_class` (TrainConfig or a subclass) of the run `settings` describe (flat
    names, as `flag_settings` gives them; unset ones from the preset)."""
    from megadoc.data import store as store_lib

    s = dict(settings)
    if not s.get("workdir") or not s.get("real"):
        raise app.UsageError("--workdir and --real are required")
    name = s.pop("preset", None) or ("cpt" if s.get("init") else "tiny")
    p = config.preset(name)
    shape = {"remat": s.pop("remat", None) or p.remat,
             "cross_document_attention": s.pop("cross_document_attention",
                                               llama.LlamaConfig.cross_document_attention)}
    if s.get("init"):  # the source's architecture, vocabulary and context; the loop checks stores
        from megadoc.train import pretrained

        model = dataclasses.replace(pretrained.load_config(s["init"]), **shape)
    elif p.model is None:
        raise app.UsageError(f"--preset={name} continues pre-training: it needs --init")
    else:
        real = store_lib.open(s["real"])
        model = dataclasses.replace(llama.preset(p.model), vocab_size=int(real.metadata["vocab_size"]),
                                    max_seq_len=real.seq_len, **shape)

    def take(cls, **preset_values):
        names = {f.name for f in dataclasses.fields(cls)}
        return preset_values | {k: s.pop(k) for k in list(s) if k in names}

    data = config.DataConfig(**take(config.DataConfig, global_batch=p.global_batch))
    optimizer = config.OptimizerConfig(**take(config.OptimizerConfig, lr=p.lr,
                                              weight_decay=p.weight_decay,
                                              warmup_frac=p.warmup_frac))
    run = take(config_class, rows_per_device=p.rows_per_device)
    if s:
        raise ValueError(f"unknown run settings: {', '.join(sorted(s))}")
    return config_class(model=model, data=data, optimizer=optimizer, **run)


def train_config_from_argv(argv, **settings) -> config.TrainConfig:
    """The TrainConfig of `experiments.train ARGV` (e.g. a search's --train_flags), with
    `settings` (flat names) replacing what the flags say."""
    f = flags.FlagValues()
    define_flags(f)
    try:
        f(["train", *argv])
    except flags.Error as e:
        raise app.UsageError(f"{' '.join(argv)}: {e}") from e
    return train_config(flag_settings(f) | settings)
