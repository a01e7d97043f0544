"""Train a student on a real store, optionally mixed with a synthetic one.

    python -m experiments.train --preset=tiny --workdir=/tmp/run --real=STORE \\
        [--synthetic=STORE --mix=0.75] --epochs=4 --lr=3e-3 --weight_decay=0.8 \\
        --val=iid=VAL_DOCS.jsonl [--val=arxiv=DOCS_OR_STORE ...]
    python -m experiments.train --init=SmolLM2-135M-Instruct.gguf --workdir=/tmp/cpt \\
        --real=SYNTHETIC_STORE --epochs=2 [--lr=5e-6 --weight_decay=0.01]   # preset cpt

With --init, training continues from a pre-trained model with its architecture (stores must be
prepared with its tokenizer: prepare --tokenizer=<the same .gguf or directory>); the preset
defaults to cpt.

Rerunning the same command resumes from the newest complete checkpoint in --workdir (a
preempted run exits 143). Multi-host (TPU pod slice): run the same command on every host with
--distributed.
"""
from __future__ import annotations

from absl import app, flags

from megadoc import cli
from megadoc.pipelines import runs
from megadoc.train import config, published

FLAGS = flags.FlagValues()  # also the paper-experiment modules' (baseline, stitched, ...)
runs.define_flags(FLAGS)


def build_config(f=FLAGS, config_class=config.TrainConfig):
    return runs.train_config(runs.flag_settings(f, config_class), config_class)


def initialize_distributed(f=FLAGS) -> None:
    cli.build(runs.Launch, f).initialize()


def main(argv):
    del argv
    initialize_distributed()
    runs.train(build_config())


def run_experiment(defaults: dict, synthetic_recipe: str | None,
                   by_preset: dict[str, dict] | None = None) -> None:
    """Entry point of a paper-experiment module: its defaults (and, for the --preset chosen, those
    of `by_preset`), any flag still overridable, and a check that --synthetic holds the recipe
    the experiment is about; --published_generations=N takes the published optimum for N."""
    for name, value in defaults.items():
        FLAGS.set_default(name, value)

    def experiment_main(argv):
        apply_preset_defaults(by_preset or {})
        if synthetic_recipe:
            apply_published(synthetic_recipe)
        check_recipe(synthetic_recipe)
        main(argv)

    cli.run(experiment_main, flags_parser=cli.parser(FLAGS))


def apply_preset_defaults(by_preset: dict[str, dict], f=FLAGS) -> None:
    """The chosen preset's values for the flags the command line did not give."""
    fill_unset(by_preset.get(f.preset, {}), f)


def apply_published(recipe: str, f=FLAGS) -> None:
    """--published_generations=N: the published point of (recipe, N) fills flags not given."""
    if f.published_generations is None:
        return
    try:
        point = published.point(recipe, f.published_generations, f.preset)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    fill_unset(point.as_flags(), f)


def fill_unset(values: dict, f=FLAGS) -> None:
    for name, value in values.items():
        if not f[name].present:
            f[name].value = value


def define_generations_flag() -> None:
    """--published_generations, for the synthetic paper-experiment modules."""
    if "published_generations" not in FLAGS:
        flags.DEFINE_integer(
            "published_generations", None, "generations per document in --synthetic: --epochs, "
            "--lr, --weight_decay and --mix not given take the published optimum for it "
            "(megadoc.train.published), e.g. 32 is the paper's best stitched run",
            flag_values=FLAGS)
        flags.DEFINE_alias("generations", "published_generations", flag_values=FLAGS)


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
    generations = f.published_generations if "published_generations" in f else None
    if generations and metadata.get("max_generations") not in (None, generations):
        raise app.UsageError(f"{f.synthetic}: prepared with --max_generations="
                             f"{metadata['max_generations']}, but --published_generations="
                             f"{generations}")


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
