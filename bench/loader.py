"""Loader throughput against what the tiny model's train step consumes, in one run.

Three numbers from a local window store: (1) loader tokens/s alone (global jax.Arrays ready on
the mesh), (2) tokens/s of a jitted forward+backward of llama.preset("tiny"), and (3) the train
step's time when fed by the loader, and how much of it is spent waiting for the next batch.
"""
from __future__ import annotations

import functools
import tempfile
import time

import jax
import numpy as np

from megadoc.data import loader, store
from megadoc.data.schedule import MixSchedule
from megadoc.models import llama, sharding
from megadoc.train.step import mean_loss

BATCH, WINDOWS, LOADER_STEPS, TRAIN_STEPS = 16, 4096, 300, 20


def _make_store(path: str, seq_len: int, vocab: int, seed: int) -> store.WindowStore:
    writer = store.StoreWriter(path, seq_len)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, (WINDOWS, seq_len + 1), dtype=np.int32)
    segments = np.cumsum(rng.random((WINDOWS, seq_len + 1)) < 0.01, axis=1, dtype=np.int32) + 1
    writer.append(tokens, segments)
    writer.finish({"tokenizer_fingerprint": "bench", "num_tokens": tokens.size, "recipe": "bench"})
    return store.open(path)


def _loader(real, synthetic, mesh):
    schedule = MixSchedule(len(real), len(synthetic), BATCH, 0.5, 4, seed=0)
    return loader.BatchLoader(schedule, real, synthetic, sharding.batch_sharding(mesh))


def _timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        jax.block_until_ready(fn())
    return (time.perf_counter() - start) / steps


def run() -> str:
    config = llama.preset("tiny")
    seq_len = config.max_seq_len
    mesh = sharding.make_mesh()
    with tempfile.TemporaryDirectory() as tmp:
        real = _make_store(f"{tmp}/real", seq_len, config.vocab_size, 0)
        synthetic = _make_store(f"{tmp}/synthetic", seq_len, config.vocab_size, 1)

        batches = _loader(real, synthetic, mesh)
        next(batches)
        loader_s = _timed(lambda: next(batches)[1], LOADER_STEPS)

        params = llama.init(config, jax.random.key(0))
        grad_fn = jax.jit(jax.value_and_grad(functools.partial(mean_loss, config)))
        fixed = next(_loader(real, synthetic, mesh))[1]

        def step(batch):
            return grad_fn(params, batch["tokens"], batch["segment_ids"])

        step(fixed)  # compile
        fixed_s = _timed(lambda: step(fixed), TRAIN_STEPS)
        batches = _loader(real, synthetic, mesh)
        step(next(batches)[1])
        wait = 0.0
        start = time.perf_counter()
        for _ in range(TRAIN_STEPS):
            before = time.perf_counter()
            batch = next(batches)[1]
            wait += time.perf_counter() - before
            jax.block_until_ready(step(batch))
        fed_s = (time.perf_counter() - start) / TRAIN_STEPS
        wait_s = wait / TRAIN_STEPS

    tokens = BATCH * seq_len
    ratio = fixed_s / loader_s
    share = wait_s / fed_s
    verdict = "meets" if ratio >= 50 and share < 0.05 else "MISSES"
    return "\n".join([
        "## Loader (`bench/loader.py`)",
        "",
        f"Local store, {WINDOWS} windows × {seq_len}+1 tokens, global batch {BATCH}, mix 0.5, "
        f"{len(jax.devices())} device(s); model `llama.preset('tiny')` forward+backward under jit.",
        "",
        "| measure | ms/step | tokens/s |",
        "|---|---|---|",
        f"| loader alone (global jax.Arrays) | {loader_s * 1e3:.2f} | {tokens / loader_s:,.0f} |",
        f"| train step, one fixed batch | {fixed_s * 1e3:.2f} | {tokens / fixed_s:,.0f} |",
        f"| train step fed by the loader | {fed_s * 1e3:.2f} | {tokens / fed_s:,.0f} |",
        f"| of which waiting for the loader | {wait_s * 1e3:.3f} | |",
        "",
        f"Loader / train-step throughput: **{ratio:.0f}×** (goal ≥ 50×). Time the step loop waits "
        f"for the loader (prefetch in background threads): **{share * 100:.2f}%** of step time "
        f"(goal < 5%). Verdict: {verdict}.",
    ])


if __name__ == "__main__":
    print(run())
