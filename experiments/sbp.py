"""Synthetic Bootstrapped Pretraining end to end (megadoc.pipelines.sbp): pairs → conditional
model → synthesis → students on real only, real + SBP data, and (when --docs holds more than
--real_docs) an oracle with more unique real documents, at equal compute.

    python -m experiments.sbp --base=BASE --docs=DOCS --val=VAL_DOCS --workdir=DIR \\
        [--real_docs=N --mix=0.25 --student_epochs=3 --threshold=0.75 ...]

BASE is a .gguf file, a Hugging Face Llama directory or a megadoc workdir: it embeds the
documents, and is continued as p(x2 | x1) on their nearest-neighbour pairs. Writes
DIR/results.md (the table), DIR/results.json and DIR/val_loss.png; a rerun skips finished stages
and resumes the others.
"""
from megadoc import cli, fs
from megadoc.pipelines import sbp

FLAGS = cli.command_flags(sbp.SBPConfig)


def main():
    cfg = cli.build(sbp.SBPConfig, FLAGS)
    sbp.run(cfg)
    print(fs.read_text(fs.join(cfg.workdir, "results.md")), flush=True)


if __name__ == "__main__":
    cli.run_flags(main, FLAGS)
