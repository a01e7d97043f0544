"""Distillation into one student, either of the papers' two ways, as one run of the loop in this
process (megadoc.analysis.distill): token-level KL to teacher runs (`student.teacher`), or
training on documents a teacher sampled (`texts`, e.g. unconditional samples of the student's
own architecture: self-distillation), mixed with the real stream."""
from __future__ import annotations

import dataclasses

from megadoc.analysis import distill, ensemble
from megadoc.data import store as store_lib
from megadoc.pipelines import runs


@dataclasses.dataclass(frozen=True)
class DistillJob:
    """The student's run and what it learns from."""
    student: distill.DistillConfig
    """the student's run; its `teacher` runs give the KL target"""
    texts: str | None = None
    """generation records to train on instead of a teacher (the synthetic stream, at the
    student's mix)"""

    def __post_init__(self):
        if bool(self.student.teacher) == bool(self.texts):
            raise ValueError("distillation takes teacher runs or --texts, one of them")
        if self.texts and self.student.data.synthetic != distill.texts_store_path(
                self.student.workdir):
            raise ValueError(f"--texts become the synthetic stream "
                             f"{distill.texts_store_path(self.student.workdir)}; drop --synthetic")


def student_config(settings: dict, texts: str | None) -> distill.DistillConfig:
    """The student's run from its settings (flat names, as `runs.train_config` takes them); with
    `texts`, their store under the workdir is the synthetic stream."""
    if texts:
        if settings.get("synthetic"):
            raise ValueError("--texts becomes the synthetic stream; drop --synthetic")
        if not settings.get("mix", 0) > 0:
            raise ValueError("--texts needs --mix > 0: the fraction of each batch from the texts")
        settings = dict(settings, synthetic=distill.texts_store_path(settings.get("workdir")))
    return runs.train_config(settings, distill.DistillConfig)


def run(job: DistillJob) -> dict:
    """The student's finished summary; a rerun resumes it."""
    if job.texts:
        summary = distill.train_on_texts(job.student, job.texts)
    else:
        teacher_config, teacher = ensemble.load_members(list(job.student.teacher))
        ensemble.check_store(job.student.teacher, store_lib.open(job.student.data.real))
        summary = distill.distill(job.student, teacher_config, teacher)
    if summary["status"] == "preempted":
        raise runs.Preempted(job.student.workdir, summary["step"])
    return summary
