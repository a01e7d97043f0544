"""What a run reports: FLOPs/MFU, the batch fingerprint, and the metrics writer.

Only process 0 writes. metrics.jsonl gets one row per step (plus eval rows); TensorBoard events
get the same scalars; stdout gets a progress line every `log_every` steps.
"""
from __future__ import annotations

import datetime
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from megadoc import fs
from megadoc.models import llama, matmul
from megadoc.train import tfevents

# bf16 dense peak per chip, FLOP/s.
KNOWN_PEAKS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
               "TPU v5p": 459e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
               "H100": 989e12, "H200": 989e12, "A100": 312e12}


def flops_per_token(config: llama.LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·N over the matmul params (all but the input embedding) plus
    attention 12·layers·heads·head_dim·seq, causal mask ignored (the PaLM convention); remat
    recomputation is not counted (MFU, not hardware utilisation)."""
    n_matmul = llama.num_params(config) - config.vocab_size * config.hidden
    head_dim = config.head_dim or config.hidden // config.heads
    return 6.0 * n_matmul + 12.0 * config.layers * config.heads * head_dim * seq_len


def measure_matmul_peak(n: int = 2048, iters: int = 5) -> float:
    """FLOP/s of the model's matmul form on the first local device: bf16 values in the dtype
    its dots read (`matmul.dot_dtype`: fp32 on a CPU without bf16 dot units), products
    accumulated in fp32."""
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), matmul.dot_dtype(jnp.bfloat16)), device)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    f(a, a).block_until_ready()
    start = time.perf_counter()
    for _ in range(iters):
        out = f(a, a)
    out.block_until_ready()
    return 2.0 * n**3 * iters / (time.perf_counter() - start)


def total_peak_flops(per_device: float = 0.0) -> float:
    """Peak FLOP/s of all devices of the job. On CPU the simulated devices share one host's cores,
    so the peak is the measured matmul rate per process."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return (per_device or measure_matmul_peak()) * jax.process_count()
    if not per_device:
        kind = device.device_kind
        per_device = next((v for k, v in KNOWN_PEAKS.items() if k in kind), 0.0)
        per_device = per_device or measure_matmul_peak(8192)
    return per_device * jax.device_count()


def _mix32(x):
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def batch_fingerprint(tokens_BxT: jax.Array) -> jax.Array:
    """Two uint32 hashes of (position, token) over the global batch. Sums modulo 2**32 are
    exact in any reduction order, so every sharding and host count gives the same value."""
    b, t = tokens_BxT.shape
    pos = jnp.arange(b * t, dtype=jnp.uint32).reshape(b, t)
    x = _mix32(tokens_BxT.astype(jnp.uint32) ^ (pos * jnp.uint32(0x9E3779B1)))
    y = _mix32(x ^ (pos + jnp.uint32(0x7F4A7C15)))
    return jnp.stack([jnp.sum(x, dtype=jnp.uint32), jnp.sum(y, dtype=jnp.uint32)])


def fingerprint_hex(fp) -> str:
    a, b = (int(v) for v in np.asarray(fp))
    return f"{a:08x}{b:08x}"


class Writer:
    """metrics.jsonl + TensorBoard + progress lines; a no-op on processes other than 0."""

    def __init__(self, workdir: str, num_steps: int, log_every: int):
        self.enabled = jax.process_index() == 0
        self.path = fs.join(workdir, "metrics.jsonl")
        self.num_steps, self.log_every = num_steps, max(1, log_every)
        self._rows: list[dict] = []
        self._tb = tfevents.EventWriter(fs.join(workdir, "tensorboard")) if self.enabled else None
        self._start: tuple[float, int] | None = None

    def truncate_after(self, step: int) -> None:
        """On resume from checkpoint `step`: drop rows of later steps (they will be redone)."""
        if not self.enabled or not fs.exists(self.path):
            return
        rows = [row for _, row in fs.read_jsonl_log(self.path)]  # a torn last row is cut off
        kept = [row for row in rows if row["step"] <= step]
        if len(kept) != len(rows):
            fs.write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        self._rows.append(row)
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                self._tb.scalar(k if "/" in k else f"train/{k}", v, row["step"])
        if "loss" in row:
            self._progress(row)

    def _progress(self, row: dict) -> None:
        step = row["step"]
        now = time.perf_counter()
        if self._start is None:
            self._start = (now, step)
        if step % self.log_every and step != self.num_steps:
            return
        t0, s0 = self._start
        rate = (step - s0) / (now - t0) if step > s0 else 0.0
        eta = datetime.timedelta(seconds=round((self.num_steps - step) / rate)) if rate else "?"
        print(f"step {step}/{self.num_steps} loss {row['loss']:.4f} "
              f"lr {row['lr']:.2e} | {row['tokens_per_s']:,.0f} tok/s | "
              f"mfu {100 * row['mfu']:.1f}% | eta {eta}", flush=True)
        self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._rows:
            return
        fs.append_jsonl(self.path, self._rows)
        self._rows = []
        self._tb.flush()
