"""Synthetic Bootstrapped Pretraining end to end: pairs → conditional model → synthesis →
students on real only, real + SBP data, and (when --docs holds more than --real_docs) an oracle
with more unique real documents, at equal compute.

    python -m experiments.sbp --base=BASE --docs=DOCS --val=VAL_DOCS --workdir=DIR \\
        [--real_docs=N --mix=0.25 --student_epochs=3 --threshold=0.75 ...]

BASE is a .gguf file, a Hugging Face Llama directory or a megadoc workdir: it embeds the
documents, and is continued as p(x2 | x1) on their nearest-neighbour pairs. Writes
DIR/results.md (the table), DIR/results.json and DIR/val_loss.png; a rerun skips finished stages
and resumes the others. Stages: megadoc/analysis/sbp.py.
"""
from __future__ import annotations

from absl import app, flags

from megadoc import cli, fs
from megadoc.analysis import sbp

FLAGS = flags.FlagValues()
cli.define_fields(sbp.SBPConfig, FLAGS)


def main(argv):
    del argv
    missing = [n for n in ("base", "docs", "val", "workdir") if not getattr(FLAGS, n)]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join('--' + n for n in missing)}")
    cfg = sbp.SBPConfig(**cli.field_values(sbp.SBPConfig, FLAGS))
    sbp.run(cfg)
    print(fs.read_text(fs.join(cfg.workdir, "results.md")), flush=True)


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
