"""Ensembles and benchmarks give the same numbers on 1 process and on 2 processes (4 CPU
devices each): every consumer places its rows through megadoc.data.host_rows."""
import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from megadoc.analysis import benchmarks, ensemble
from megadoc.data import store as store_lib
from megadoc.models import llama
from train_fixtures import VOCAB, make_store

CONFIG = dataclasses.replace(llama.preset("tiny"), dtype="float32", vocab_size=VOCAB,
                             max_seq_len=32)


def members(k=3):
    """Random members drawn with numpy, the same in every process."""
    rng = np.random.default_rng(0)
    shapes = llama.param_shapes(CONFIG)
    return [{**{n: rng.normal(0, 0.1, shapes[n]).astype(np.float32) for n in ("embed", "lm_head")},
             "final_norm": np.ones(shapes["final_norm"], np.float32),
             "layers": {n: (np.ones(s, np.float32) if n.endswith("norm")
                            else rng.normal(0, 0.1, s).astype(np.float32))
                        for n, s in shapes["layers"].items()}} for _ in range(k)]


def requests():
    rng = np.random.default_rng(1)
    return [(rng.integers(1, VOCAB, rng.integers(1, 20)).tolist(),
             rng.integers(1, VOCAB, rng.integers(1, 6)).tolist()) for _ in range(13)]


def analysis_numbers(val_store: str) -> dict:
    """Every number the two consumers compute, on the mesh of all (global) devices."""
    stacked = ensemble.stack_params(members())
    store = store_lib.open(val_store)
    out = {f"ensemble_{avg}": ensemble.ensemble_loss(CONFIG, stacked, store, 4, average=avg)
           for avg in ensemble.AVERAGES}
    single = benchmarks.token_loglikelihoods(CONFIG, members()[0], requests(), batch_size=4)
    pooled = benchmarks.token_loglikelihoods(CONFIG, stacked, requests(), batch_size=4,
                                             ensemble_average="probs")
    return out | {"benchmark_single": single.tolist(), "benchmark_ensemble": pooled.tolist()}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ensembles_and_benchmarks_agree_on_1_and_2_processes(tmp_path):
    val = make_store(str(tmp_path / "val"), 13)  # 13 windows: the last batch is padded
    want = analysis_numbers(val)
    port = free_port()
    worker = os.path.join(os.path.dirname(os.path.abspath(__file__)), "analysis_worker.py")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, worker, str(i), "2", str(port), val],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        got = json.loads(next(x for x in out.splitlines() if x.startswith("NUMBERS "))[8:])
        assert set(got) == set(want)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)
    assert np.all(np.isfinite(want["benchmark_ensemble"]))
