"""GPU section of `make bench`, present only where a GPU is: train-step MFU of the 150m preset
at sequence 4096 (goal ≥ 50%) and sampler decode tokens/s at batch 64 on the SmolLM2-135M shape.

The other sections pin jax to the CPU (to compare with torch on the same cores), so this one runs
in a child process with jax on the GPU: `JAX_PLATFORMS=cuda python -m bench.gpu`.
"""
import os
import shutil
import subprocess
import sys

TRAIN_BATCH, TRAIN_SEQ = 4, 4096
SAMPLER_BATCH, SAMPLER_PROMPT = 64, 256


def run() -> str | None:
    """The section, or None where no GPU is visible."""
    if shutil.which("nvidia-smi") is None:
        return None
    child = subprocess.run([sys.executable, "-m", "bench.gpu"], capture_output=True, text=True,
                           env=dict(os.environ, JAX_PLATFORMS="cuda"), check=True)
    return child.stdout.strip()


def _section() -> str:
    import dataclasses

    import jax
    import numpy as np

    from bench import sampler as sampler_bench, train_step
    from megadoc.models import llama
    from megadoc.train import metrics

    model = dataclasses.replace(llama.preset("150m"), max_seq_len=TRAIN_SEQ)
    step_s = train_step._best_interleaved(
        {"150m": train_step.megadoc_step(model, TRAIN_BATCH, TRAIN_SEQ)})["150m"]
    flops = metrics.flops_per_token(model, TRAIN_SEQ) * TRAIN_BATCH * TRAIN_SEQ
    mfu = flops / step_s / metrics.total_peak_flops()

    s = sampler_bench.SMOL_SHAPE
    config = llama.LlamaConfig(
        vocab_size=s["vocab_size"], hidden=s["hidden_size"], ffn=s["intermediate_size"],
        layers=s["num_hidden_layers"], heads=s["num_attention_heads"],
        kv_heads=s["num_key_value_heads"], head_dim=s["head_dim"], rope_theta=s["rope_theta"],
        max_seq_len=s["max_position_embeddings"])
    params = llama.init(config, jax.random.key(0))
    prompts = np.random.default_rng(0).integers(
        3, config.vocab_size, (SAMPLER_BATCH, SAMPLER_PROMPT)).tolist()
    new = sampler_bench.SMOL_NEW_TOKENS
    _, best = sampler_bench._cold_and_best(
        {"prefill": sampler_bench._ours_smol(config, params, prompts, 1),
         "full": sampler_bench._ours_smol(config, params, prompts, new)},
        sampler_bench.SMOL_ROUNDS)
    decode = SAMPLER_BATCH * (new - 1) / (best["full"] - best["prefill"])
    return "\n".join([
        f"## GPU ({jax.devices()[0].device_kind})",
        "",
        f"Train step, preset 150m, batch {TRAIN_BATCH} × {TRAIN_SEQ}: {step_s:.3f} s/step, MFU "
        f"**{100 * mfu:.1f}%** of {metrics.total_peak_flops() / 1e12:,.0f} TFLOP/s (goal ≥ 50%). "
        f"Verdict: {'meets' if mfu >= 0.5 else 'does not meet'} the goal.",
        "",
        f"Sampler, SmolLM2-135M shape, batch {SAMPLER_BATCH}, prompt {SAMPLER_PROMPT}, {new} new "
        f"tokens, greedy: decode **{decode:,.0f}** tok/s, prefill "
        f"{SAMPLER_BATCH * SAMPLER_PROMPT / best['prefill']:,.0f} tok/s.",
    ])


if __name__ == "__main__":
    print(_section())
