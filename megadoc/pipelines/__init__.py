"""Jobs, each a function `run(config) -> result` of a frozen config: the demo, the knowledge
pipeline, the generations sweep, the certified search, ensembles, distillation, and the
evaluations a command runs (benchmarks, qa_eval).

Every training run they start goes through `runs.train` (megadoc.train.loop, in this process),
every synthesis through `megadoc.synth.job.run`; a rerun with the same config resumes, and the
results are frozen dataclasses (also written as JSON beside the runs). The commands in
`experiments/` only turn flags into these configs.
"""
