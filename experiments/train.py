"""Train a student on a real store, optionally mixed with a synthetic one.

    python -m experiments.train --preset=tiny --workdir=/tmp/run --real=STORE \\
        [--synthetic=STORE --mix=0.75] --epochs=4 --lr=3e-3 --weight_decay=0.8 \\
        --val=iid=VAL_DOCS.jsonl [--val=arxiv=DOCS_OR_STORE ...]
    python -m experiments.train --init=SmolLM2-135M-Instruct.gguf --workdir=/tmp/cpt \\
        --real=SYNTHETIC_STORE --epochs=2 [--lr=5e-6 --weight_decay=0.01]   # preset cpt

With --init, training continues from a pre-trained model with its architecture (stores must be
prepared with its tokenizer: prepare --tokenizer=<the same .gguf or directory>).

Rerunning the same command resumes from the newest complete checkpoint in --workdir. Multi-host
(TPU pod slice): run the same command on every host with --distributed.
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from experiments import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", None, "training preset: tiny | 150m | 300m | 600m | 1.5b | cpt "
                    "(default: cpt with --init, else tiny)")
flags.DEFINE_string("init", None, "continued pre-training: start from this .gguf file, Hugging "
                    "Face Llama directory or megadoc workdir, with its architecture")
flags.DEFINE_string("workdir", None, "output directory (local or gs://): checkpoints, metrics")
flags.DEFINE_string("real", None, "window store of real documents")
flags.DEFINE_string("synthetic", None, "window store of synthetic documents (megadocs)")
flags.DEFINE_float("mix", 0.0, "fraction of each global batch taken from --synthetic")
flags.DEFINE_integer("epochs", 1, "passes over the real store")
flags.DEFINE_integer("seed", 0, "seed of the data order and the model init")
flags.DEFINE_float("lr", None, "peak learning rate (default: the preset's)")
flags.DEFINE_float("weight_decay", None, "decoupled weight decay, times lr (default: preset's)")
flags.DEFINE_float("warmup", None, "fraction of the steps spent in linear warmup (default: "
                   "the preset's)")
flags.DEFINE_integer("global_batch", None, "windows per step (default: the preset's)")
flags.DEFINE_integer("microbatches", None, "gradient-accumulation slices per step (default: "
                     "the preset's)")
flags.DEFINE_enum("remat", None, ["none", "full", "dots"], "rematerialisation (default: preset's)")
flags.DEFINE_bool("cross_document_attention", True, "attend across document boundaries in a window")
flags.DEFINE_list("mesh", ["1", "-1", "1"], "mesh shape data,fsdp,tensor (-1: remaining devices)")
flags.DEFINE_multi_string("val", [], "NAME=PATH validation set (repeatable): a window store, or "
                          "JSONL/Parquet documents (also scored as NAME_short / NAME_long halves "
                          "by tokenized length)")
flags.DEFINE_integer("eval_every", 0, "evaluate every N steps (and at the end); 0 = end only")
flags.DEFINE_integer("eval_batch_size", 0, "eval windows per batch (0 = global batch)")
flags.DEFINE_integer("checkpoint_every_steps", 0, "checkpoint every N steps (0 = off)")
flags.DEFINE_float("checkpoint_every_minutes", 30.0, "checkpoint every N minutes (0 = off)")
flags.DEFINE_integer("keep_checkpoints", 2, "checkpoints kept (newest)")
flags.DEFINE_integer("log_every", 10, "progress line every N steps")
flags.DEFINE_float("peak_flops", 0.0, "peak FLOP/s per device for MFU (0 = known or measured)")
flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host)")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed)")
flags.DEFINE_integer("num_processes", None, "number of processes (with --distributed)")
flags.DEFINE_integer("process_id", None, "this process's index (with --distributed)")


def build_config(f=FLAGS):
    """The TrainConfig the flags describe; the model's vocab and context come from --real."""
    from megadoc.data import store as store_lib
    from megadoc.models import llama
    from megadoc.train import config

    if not f.workdir or not f.real:
        raise app.UsageError("--workdir and --real are required")
    p = config.preset(f.preset or ("cpt" if f.init else "tiny"))
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
    val = []
    for item in f.val:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--val={item!r}: expected NAME=PATH")
        val.append((name, path))
    return config.TrainConfig(
        model=model,
        data=config.DataConfig(real=f.real, synthetic=f.synthetic, mix=f.mix, epochs=f.epochs,
                               seed=f.seed, global_batch=(p.global_batch if f.global_batch is None
                                                          else f.global_batch)),
        optimizer=config.OptimizerConfig(
            lr=p.lr if f.lr is None else f.lr,
            weight_decay=p.weight_decay if f.weight_decay is None else f.weight_decay,
            warmup_frac=p.warmup_frac if f.warmup is None else f.warmup),
        workdir=f.workdir,
        microbatches=p.microbatches if f.microbatches is None else f.microbatches,
        mesh=tuple(int(x) for x in f.mesh), val=tuple(val), eval_every=f.eval_every,
        eval_batch_size=f.eval_batch_size, checkpoint_every_steps=f.checkpoint_every_steps,
        checkpoint_every_minutes=f.checkpoint_every_minutes, keep_checkpoints=f.keep_checkpoints,
        log_every=f.log_every, peak_flops=f.peak_flops, init=f.init)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
    from megadoc.train import loop

    summary = loop.train(build_config())
    if summary["status"] == "preempted":
        sys.exit(143)  # 128 + SIGTERM: the scheduler sees a preempted, resumable job


def run_experiment(defaults: dict, synthetic_recipe: str | None,
                   by_preset: dict[str, dict] | None = None) -> None:
    """Entry point of a paper-experiment module: its defaults (and, for the --preset chosen, those
    of `by_preset`), any flag still overridable, and a check that --synthetic holds the recipe
    the experiment is about."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)

    def experiment_main(argv):
        apply_preset_defaults(by_preset or {})
        check_recipe(synthetic_recipe)
        main(argv)

    cli.run(experiment_main)


def apply_preset_defaults(by_preset: dict[str, dict], f=FLAGS) -> None:
    """Sets the chosen preset's values for the flags the command line did not give."""
    for name, value in by_preset.get(f.preset, {}).items():
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
    got = store_lib.open(f.synthetic).metadata.get("recipe")
    if got != recipe:
        raise app.UsageError(f"{f.synthetic}: recipe {got!r}, this experiment needs {recipe!r}")


if __name__ == "__main__":
    cli.run(main)
