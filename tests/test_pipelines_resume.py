"""A pipeline killed with -9 and rerun resumes exactly: the ensemble command, training its
members in its own process, is killed mid-member; the rerun skips the finished member, resumes
the other from its checkpoint and ends with the parameters of an uninterrupted run."""
import json
import os
import subprocess
import sys
import time

import pytest

from megadoc.pipelines import runs
from train_fixtures import make_store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkpoints(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.mark.slow
def test_a_killed_ensemble_resumes_its_member_exactly_and_skips_the_finished_one(tmp_path):
    real = make_store(str(tmp_path / "real"), 32, seq_len=16)
    train_flags = (f"--preset=tiny --real={real} --epochs=2 --global_batch=8 --log_every=1 "
                   "--checkpoint_every_steps=4 --checkpoint_every_minutes=0")
    root = tmp_path / "ens"
    argv = [sys.executable, "-m", "experiments.ensemble", f"--root={root}", "--members=2",
            "--train", "--seed=3", f"--train_flags={train_flags}"]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / ".jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    first = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    deadline = time.monotonic() + 900
    while not [s for s in _checkpoints(str(root / "member_1")) if s >= 4]:
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "member 1 wrote no checkpoint"
        time.sleep(0.1)
    first.kill()
    first.wait()
    first.stdout.close()
    assert not (root / "member_1" / "summary.json").exists()  # the kill left work to resume

    rerun = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"member 0: finished ({root}/member_0)" in rerun.stdout
    assert f"resumed from {root}/member_1/checkpoints" in rerun.stdout
    resumed = json.loads((root / "member_1" / "summary.json").read_text())

    whole = runs.train_config_from_argv(train_flags.split(), workdir=str(tmp_path / "whole"),
                                        seed=4)
    assert runs.train(whole)["params_sha256"] == resumed["params_sha256"]
