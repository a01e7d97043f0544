"""Train a student on a real store, optionally mixed with a synthetic one.

    python -m experiments.train --preset=tiny --workdir=/tmp/run --real=STORE \\
        [--synthetic=STORE --mix=0.75] --epochs=4 --lr=3e-3 --weight_decay=0.8 \\
        --val=iid=VAL_DOCS.jsonl [--val=arxiv=DOCS_OR_STORE ...]
    python -m experiments.train --init=SmolLM2-135M-Instruct.gguf --workdir=/tmp/cpt \\
        --real=SYNTHETIC_STORE --epochs=2 [--lr=5e-6 --weight_decay=0.01]   # preset cpt

With --init, training continues from a pre-trained model with its architecture (stores must be
prepared with its tokenizer: prepare --tokenizer=<the same .gguf or directory>); the preset
defaults to cpt.

Rerunning the same command resumes from the newest complete checkpoint in --workdir. Multi-host
(TPU pod slice): run the same command on every host with --distributed.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from megadoc import cli
from megadoc.models import llama
from megadoc.train import config

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues) -> None:
    """Every field of a TrainConfig as a flag (megadoc.cli's convention); lr, weight_decay,
    global_batch, rows_per_device and remat default to the preset's (the microbatches follow
    from rows_per_device and the mesh)."""
    flags.DEFINE_string("preset", "tiny", f"training preset: {' | '.join(config.PRESETS)} "
                        "(cpt when --init is given)", flag_values=flag_values)
    preset = "the preset's"
    cli.define_fields(config.TrainConfig, flag_values, skip=("model", "data", "optimizer"),
                      filled={"rows_per_device": preset})
    cli.define_fields(config.DataConfig, flag_values, filled={"global_batch": preset})
    cli.define_fields(config.OptimizerConfig, flag_values,
                      only=("lr", "weight_decay", "warmup_frac"), aliases={"warmup_frac": "warmup"},
                      filled={"lr": preset, "weight_decay": preset, "warmup_frac": preset})
    cli.define_fields(llama.LlamaConfig, flag_values, only=("remat", "cross_document_attention"),
                      filled={"remat": preset}, choices={"remat": llama.REMAT_POLICIES})
    flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host)",
                      flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed)",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "number of processes (with --distributed)",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)",
                         flag_values=flag_values)


define_flags(FLAGS)


def build_config(f=FLAGS, config_class=config.TrainConfig):
    """The `config_class` (TrainConfig or a subclass) the flags describe; the model's vocab and
    context come from --real, flags left unset from the preset."""
    from megadoc.data import store as store_lib

    if not f.workdir or not f.real:
        raise app.UsageError("--workdir and --real are required")
    p = config.preset("cpt" if f.init and not f["preset"].present else f.preset)
    real = store_lib.open(f.real)
    if f.init:  # the source's architecture, vocabulary and context; the loop checks the stores
        from megadoc.train import pretrained

        model = dataclasses.replace(pretrained.load_config(f.init), remat=f.remat or p.remat,
                                    cross_document_attention=f.cross_document_attention)
    elif p.model is None:
        raise app.UsageError(f"--preset={f.preset} continues pre-training: it needs --init")
    else:
        model = dataclasses.replace(
            llama.preset(p.model), vocab_size=int(real.metadata["vocab_size"]),
            max_seq_len=real.seq_len, remat=f.remat or p.remat,
            cross_document_attention=f.cross_document_attention)
    data = {"global_batch": p.global_batch} | cli.field_values(config.DataConfig, f)
    optimizer = {"lr": p.lr, "weight_decay": p.weight_decay,
                 "warmup_frac": p.warmup_frac} | cli.field_values(
        config.OptimizerConfig, f)
    run = {"rows_per_device": p.rows_per_device} | cli.field_values(config_class, f)
    return config_class(model=model, data=config.DataConfig(**data),
                        optimizer=config.OptimizerConfig(**optimizer), **run)


def initialize_distributed(f=FLAGS) -> None:
    import jax

    if f.distributed:
        jax.distributed.initialize(coordinator_address=f.coordinator_address,
                                   num_processes=f.num_processes, process_id=f.process_id)


def main(argv):
    del argv
    initialize_distributed()
    from megadoc.train import loop

    summary = loop.train(build_config())
    if summary["status"] == "preempted":
        sys.exit(143)  # 128 + SIGTERM: the scheduler sees a preempted, resumable job


def run_experiment(defaults: dict, synthetic_recipe: str | None,
                   by_preset: dict[str, dict] | None = None) -> None:
    """Entry point of a paper-experiment module: its defaults (and, for the --preset chosen, those
    of `by_preset`), any flag still overridable, and a check that --synthetic holds the recipe
    the experiment is about. A synthetic experiment also takes --generations=N: the published
    optimum for N generations per document."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)

    def experiment_main(argv):
        apply_preset_defaults(by_preset or {})
        if synthetic_recipe:
            apply_published(synthetic_recipe)
        check_recipe(synthetic_recipe)
        main(argv)

    cli.run(experiment_main)


def apply_preset_defaults(by_preset: dict[str, dict], f=FLAGS) -> None:
    """Sets the chosen preset's values for the flags the command line did not give."""
    for name, value in by_preset.get(f.preset, {}).items():
        if not f[name].present:
            f[name].value = value


def define_generations_flag() -> None:
    """--generations, for the synthetic paper-experiment modules (defined once per process)."""
    if "generations" not in FLAGS:
        flags.DEFINE_integer(
            "generations", None, "generations per document in --synthetic: --epochs, --lr, "
            "--weight_decay and --mix not given take the published optimum for it "
            "(megadoc.train.published), e.g. --generations=32 is the paper's best stitched run")


def apply_published(recipe: str, f=FLAGS) -> None:
    """--generations=N: the published point of (recipe, N) fills the flags not given."""
    from megadoc.train import published

    if f.generations is None:
        return
    try:
        point = published.point(recipe, f.generations, f.preset)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    for name, value in point.as_flags().items():
        if not f[name].present:
            f[name].value = value


def check_recipe(recipe: str | None, f=FLAGS) -> None:
    from megadoc.data import store as store_lib

    if recipe is None:
        if f.synthetic or f.mix:
            raise app.UsageError("this experiment trains on real data only: no --synthetic/--mix")
        return
    if not f.synthetic:
        raise app.UsageError(f"--synthetic=STORE (prepared with --recipe={recipe}) is required")
    metadata = store_lib.open(f.synthetic).metadata
    if metadata.get("recipe") != recipe:
        raise app.UsageError(f"{f.synthetic}: recipe {metadata.get('recipe')!r}, this experiment "
                             f"needs {recipe!r}")
    generations = f.generations if "generations" in f else None
    if generations and metadata.get("max_generations") not in (None, generations):
        raise app.UsageError(f"{f.synthetic}: prepared with --max_generations="
                             f"{metadata['max_generations']}, but --generations={generations}")


if __name__ == "__main__":
    cli.run(main)
