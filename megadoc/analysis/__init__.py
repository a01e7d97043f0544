"""Analysis: ensembles, distillation, multiple-choice benchmarks, scaling laws and data efficiency,
certified hyper-parameter search, plots."""
