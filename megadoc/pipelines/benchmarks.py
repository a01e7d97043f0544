"""Multiple-choice accuracy (PIQA, SciQ, ARC-Easy; lm-eval-harness scoring) of a megadoc run, a
Hugging Face Llama directory, a GGUF file, or an ensemble of runs (their logits averaged)
(megadoc.analysis.benchmarks). The tokenizer is the model's own (a run's: the one its stores
were prepared with) unless `tokenizer` overrides it."""
from __future__ import annotations

import dataclasses
import json

from megadoc import fs
from megadoc.analysis import benchmarks, ensemble

DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class BenchmarksConfig:
    """The model (or ensemble), the task files, and how they are scored."""
    model: str | None = None
    """a megadoc training run (its newest checkpoint), a Hugging Face Llama directory or a GGUF
    file"""
    workdirs: tuple[str, ...] = ()
    """training run(s) whose newest checkpoints are scored; several = an ensemble"""
    dtype: str = "float32"
    """compute dtype of the scoring forward pass (lm-eval scores in float32)"""
    step: int | None = None
    """checkpoint step of a single run (default: the newest)"""
    average: str = "logits"
    """how ensemble members are combined: logits | probs"""
    tokenizer: str | None = None
    """override the model's own tokenizer (default: the GGUF file's, the Hugging Face
    directory's, or the one a run's stores were prepared with)"""
    piqa: str | None = None
    """PIQA JSONL {goal, sol1, sol2, label}"""
    sciq: str | None = None
    """SciQ JSONL {question, distractor1-3, correct_answer, support}"""
    arc_easy: str | None = None
    """ARC-Easy JSONL (nested or flat Hugging Face layout)"""
    batch_size: int = 16
    """sequences per forward pass"""
    output: str | None = None
    """JSON results path (default for one run: <workdir>/benchmarks.json)"""

    def __post_init__(self):
        if bool(self.model) == bool(self.workdirs):
            raise ValueError("pass --model (a run, a Hugging Face directory or a GGUF file) or "
                             "--workdirs")
        if len(self.workdirs) > 1 and (self.step is not None or not self.output):
            raise ValueError("an ensemble (several --workdirs) takes --output and no --step")
        if not self.tasks():
            raise ValueError(f"pass at least one of --{', --'.join(benchmarks.READERS)}")

    def tasks(self) -> dict[str, str]:
        return {task: getattr(self, task) for task in benchmarks.READERS if getattr(self, task)}


def run(cfg: BenchmarksConfig) -> dict:
    """{task: {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}, "average": ...}, also
    written to the output path."""
    from megadoc.models import sharding
    from megadoc.train import pretrained

    workdirs = [cfg.model] if cfg.model else list(cfg.workdirs)
    if pretrained.kind(workdirs[0]) != "workdir" and (cfg.step is not None or not cfg.output):
        raise ValueError("a Hugging Face or GGUF --model takes --output and no --step")
    tokenizer = pretrained.load_tokenizer(workdirs[0], cfg.tokenizer)
    for member in workdirs[1:]:
        pretrained.check_tokenizer(member, tokenizer)
    average = None
    if len(workdirs) == 1:
        config, params = pretrained.load(workdirs[0], step=cfg.step)
    else:
        config, params = ensemble.load_members(workdirs)
        average = cfg.average
    config = dataclasses.replace(config, dtype=cfg.dtype)
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{tokenizer.path}: vocab {tokenizer.vocab_size} exceeds the model's "
                         f"{config.vocab_size}")
    loglikelihood = benchmarks.model_loglikelihood(config, params, tokenizer,
                                                   batch_size=cfg.batch_size,
                                                   mesh=sharding.make_mesh(),
                                                   ensemble_average=average)
    results = benchmarks.evaluate(cfg.tasks(), loglikelihood)
    results.update(model=cfg.model, workdirs=workdirs, step=cfg.step, dtype=cfg.dtype)
    fs.write_text(cfg.output or fs.join(workdirs[0], "benchmarks.json"),
                  json.dumps(results, indent=1) + "\n")
    return results
