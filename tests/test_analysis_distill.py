import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

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


def teacher_params():
    return ensemble.stack_params([random_params(TEACHER, i) for i in range(2)])


def config(workdir, real, val):
    return distill.DistillConfig(
        model=STUDENT, workdir=workdir, teacher=("a", "b"),
        data=config_lib.DataConfig(real=real, epochs=2, global_batch=8),
        optimizer=config_lib.OptimizerConfig(lr=1e-2, weight_decay=0.0),
        kl_weight=0.9, mesh=(2, 2, 2), microbatches=2, val=(("val", val),), log_every=8,
        checkpoint_every_steps=1, checkpoint_every_minutes=0)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("distill")
    return {"real": write_store(d / "real", 32, 16), "val": write_store(d / "val", 8, 16, seed=1),
            "dir": d}


@pytest.fixture(scope="module")
def reference(stores):
    workdir = str(stores["dir"] / "reference")
    return workdir, distill.distill(config(workdir, stores["real"], stores["val"]), TEACHER,
                                    teacher_params())


def metric_rows(workdir):
    rows = {}
    for line in open(f"{workdir}/metrics.jsonl"):
        r = json.loads(line)
        if "kl" in r:
            rows[r["step"]] = r
    return [rows[s] for s in sorted(rows)]


def test_distillation_loss_decreases_and_the_student_is_loadable(reference):
    workdir, summary = reference
    kl = [r["kl"] for r in metric_rows(workdir)]
    assert len(kl) == summary["final_step"] == 8
    assert np.mean(kl[-2:]) < 0.8 * np.mean(kl[:2])
    assert np.isfinite(summary["eval"]["val"])
    assert summary["config"]["teacher_members"] == 2 and summary["config"]["kl_weight"] == 0.9

    config_, params = checkpoint.load_params(workdir)
    assert config_ == STUDENT
    assert params["layers"]["q"].shape == (1, 32, 2, 16)


def test_distillation_refuses_a_teacher_with_another_vocabulary(stores, tmp_path):
    cfg = config(str(tmp_path / "student"), stores["real"], stores["val"])
    with pytest.raises(ValueError, match="one vocabulary"):
        distill.distill(cfg, dataclasses.replace(TEACHER, vocab_size=512), teacher_params())


@pytest.mark.slow
def test_distillation_resumes_bit_identically_after_kill_9(stores, reference):
    workdir = str(stores["dir"] / "killed")
    worker = [sys.executable, os.path.join(os.path.dirname(__file__), "distill_worker.py"),
              workdir, stores["real"], stores["val"]]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    first = subprocess.Popen(worker, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    steps = pathlib.Path(workdir) / "checkpoints"
    while first.poll() is None and not (steps.exists() and "3" in os.listdir(steps)):
        time.sleep(0.02)
    first.kill()  # SIGKILL: no handler runs, a save may be cut midway
    first.wait()
    done = subprocess.run(worker, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "STATUS finished" in done.stdout and "resumed from" in done.stdout
    ref_dir, ref_summary = reference
    got, want = metric_rows(workdir), metric_rows(ref_dir)
    assert [(r["loss"], r["kl"], r["data_loss"]) for r in got] == \
        [(r["loss"], r["kl"], r["data_loss"]) for r in want]
    with open(f"{workdir}/summary.json") as f:
        assert json.load(f)["params_sha256"] == ref_summary["params_sha256"]
