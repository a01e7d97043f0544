import dataclasses
import json

import jax
import numpy as np
import pytest

from megadoc.analysis import distill, ensemble
from megadoc.data import store as store_lib
from megadoc.models import llama
from megadoc.train import checkpoint
from megadoc.train import config as config_lib

TEACHER = dataclasses.replace(llama.preset("tiny"), dtype="float32", max_seq_len=16)
STUDENT = dataclasses.replace(TEACHER, hidden=32, ffn=64, layers=1, heads=2, kv_heads=1, head_dim=None)


def write_store(path, n, seq_len, seed=0):
    rng = np.random.default_rng(seed)
    writer = store_lib.StoreWriter(str(path), seq_len)
    writer.append(rng.integers(0, 256, (n, seq_len + 1)), np.ones((n, seq_len + 1), np.int32))
    writer.finish({"tokenizer_fingerprint": "test", "vocab_size": 256, "recipe": "real",
                   "num_tokens": n * seq_len})
    return str(path)


def random_params(config, seed):
    """Teacher members drawn with numpy: no compile needed for a model that is never trained."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, shape: np.ones(shape, np.float32) if path[-1].key.endswith("norm")
        else rng.normal(0, config.hidden ** -0.5, shape).astype(np.float32),
        llama.param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))


def test_distillation_loss_decreases_and_the_student_is_loadable(tmp_path):
    teacher = ensemble.stack_params([random_params(TEACHER, i) for i in range(2)])
    workdir = str(tmp_path / "student")
    cfg = distill.DistillConfig(
        model=STUDENT, workdir=workdir, teacher=("a", "b"),
        data=config_lib.DataConfig(real=write_store(tmp_path / "real", 32, 16), epochs=2, global_batch=8),
        optimizer=config_lib.OptimizerConfig(lr=1e-2, weight_decay=0.0),
        kl_weight=0.9, mesh=(2, 2, 2), microbatches=2, val=(("val", write_store(tmp_path / "val", 8, 16, seed=1)),), log_every=8)
    summary = distill.distill(cfg, TEACHER, teacher)
    rows = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl")]
    kl = [r["kl"] for r in rows if "kl" in r]
    assert len(kl) == summary["final_step"] == 8
    assert np.mean(kl[-2:]) < 0.8 * np.mean(kl[:2])
    assert np.isfinite(summary["eval"]["val"])

    config, params = checkpoint.load_params(workdir)
    assert config == STUDENT
    assert params["layers"]["q"].shape == (1, 32, 2, 16)

    with pytest.raises(ValueError, match="one vocabulary"):
        distill.distill(cfg, dataclasses.replace(TEACHER, vocab_size=512), teacher)
