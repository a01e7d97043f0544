"""Sampler throughput against transformers `generate` (torch, CPU), and KV-cache size: a 2-layer
toy, then the SmolLM2-135M shape against this machine's roofline.

Both sides run the same random Llama weights in fp32 with the same prompts, greedy, every sequence
generating exactly NEW_TOKENS tokens (no stop token). Each side is timed after a warm-up run, so
jit compilation and torch's first-call costs are excluded, in ROUNDS interleaved rounds (ours,
torch with its default threads, torch with one thread) keeping each side's best: on a shared
machine a busy spell then hits both sides alike. One thread is often torch's faster setting on a
busy machine; the ratio is taken against the faster of the two.

The SmolLM2-135M shape (random weights, tied embeddings) is timed with prefill and decode apart:
a run with max_new_tokens=1 is the prefill (plus one token), and decode is what a full run adds,
per new token. The first (cold) run of each minus its best warm run is the compile time. The
roofline bound of a decode step is the larger of reading the bf16 weights once at the measured
memory bandwidth and doing its matmul FLOPs at the measured peak of the model's matmul form
(`metrics.measure_matmul_peak`).
Run: `python -m bench.run bench.sampler`.
"""
import copy
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from megadoc.models import hf, llama, matmul  # noqa: E402
from megadoc.synth import sampler  # noqa: E402
from megadoc.train import metrics  # noqa: E402

BATCHES = (1, 8)
PROMPT_LEN = 32
NEW_TOKENS = 128
ROUNDS = 3
SHAPE = dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


# SmolLM2-135M (HuggingFaceTB/SmolLM2-135M's config.json), random weights.
SMOL_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                  max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True)
# batch -> prompt tokens; batch 64 takes shorter prompts so its prefill fits a bench run.
SMOL_PROMPTS = {8: 256, 64: 64}
SMOL_NEW_TOKENS = 64
SMOL_ROUNDS = 1
SMOL_VS_TORCH_BATCH = 8


def _seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _ours(config, params, prompts, state):
    settings = sampler.Settings(max_new_tokens=NEW_TOKENS, temperature=0.0)

    def run():
        s = sampler.Sampler(config, params, settings, batch_size=len(prompts))
        out = [c for c in s.run(sampler.Request(p, key=i) for i, p in enumerate(prompts))]
        assert all(len(c.tokens) == NEW_TOKENS for c in out)
        state["cache"] = s._state["cache"]

    return run


def _theirs(torch, model, prompts, threads):
    ids = torch.tensor(prompts)

    def run(n=NEW_TOKENS):
        default = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                     do_sample=False, eos_token_id=None, pad_token_id=0)
        finally:
            torch.set_num_threads(default)
        assert out.shape[1] == PROMPT_LEN + n

    return run


def _best_interleaved(runs: dict) -> dict:
    """Best seconds of each run over ROUNDS rounds, each round running every one once."""
    for fn in runs.values():
        fn()  # warm-up: jit compiles, torch's first calls
    best = {name: float("inf") for name in runs}
    for _ in range(ROUNDS):
        for name, fn in runs.items():
            best[name] = min(best[name], _seconds(fn))
    return best


def run() -> str:
    return "\n".join([_toy_section(), "", _smol_section()])


def _toy_section() -> str:
    import torch
    import transformers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SHAPE)).eval()
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        config, params = hf.load(d)
    config = dataclasses.replace(config, dtype="float32")
    rng = np.random.default_rng(0)
    default_threads = torch.get_num_threads()
    rows, cache_rows = [], []
    for batch in BATCHES:
        prompts = rng.integers(3, SHAPE["vocab_size"], (batch, PROMPT_LEN)).tolist()
        state = {}
        best = _best_interleaved({
            "ours": _ours(config, params, prompts, state),
            "default": _theirs(torch, model, prompts, default_threads),
            "one": _theirs(torch, model, prompts, 1)})
        t_ours, t_default, t_one, cache = best["ours"], best["default"], best["one"], state["cache"]
        tokens = batch * NEW_TOKENS
        rows.append(f"| {batch} | {tokens / t_ours:,.0f} | {tokens / t_default:,.0f} | "
                    f"{tokens / t_one:,.0f} | **{min(t_default, t_one) / t_ours:.1f}x** |")
        cache_len = cache["k"].shape[2]
        measured = sum(x.nbytes for x in cache.values()) / (batch * cache_len)
        cache_rows.append(f"| sampler state, batch {batch} x {cache_len} slots, "
                          f"{config.dtype} | {measured:,.0f} | {_formula(config):,} |")
    for name in ("tiny", "llama3-8b"):
        cfg = llama.preset(name)  # bf16 compute
        cache = jax.eval_shape(lambda: llama.init_cache(cfg, 4, 128))
        measured = sum(x.size * x.dtype.itemsize for x in cache.values()) / (4 * 128)
        cache_rows.append(f"| `init_cache` of preset {name}, {cfg.dtype} | {measured:,.0f} | "
                          f"{_formula(cfg):,} |")
    lines = [
        "## Sampler (megadoc.synth.sampler)",
        "",
        f"Random Llama (hidden {SHAPE['hidden_size']}, {SHAPE['num_hidden_layers']} layers, "
        f"{SHAPE['num_attention_heads']} heads / {SHAPE['num_key_value_heads']} kv heads, vocab "
        f"{SHAPE['vocab_size']}), fp32, prompt {PROMPT_LEN} tokens, {NEW_TOKENS} new tokens per "
        f"sequence, greedy; each side best of {ROUNDS} interleaved rounds after a warm-up (jax on "
        f"{jax.devices()[0].platform}; transformers {transformers.__version__} `generate`, torch "
        f"{torch.__version__} with its default {default_threads} threads and with 1 thread).",
        "",
        "| batch | megadoc tok/s | transformers tok/s (default threads) | transformers tok/s "
        "(1 thread) | speed-up vs faster torch |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "Goal: >= 5x. KV-cache bytes per token, measured vs 2 x layers x kv_heads x head_dim x "
        "bytes of the cache's dtype (`llama.cache_dtype`: fp32 on XLA:CPU, else the compute "
        "dtype):",
        "",
        "| cache | measured | formula |",
        "|---|---|---|",
        *cache_rows,
    ]
    return "\n".join(lines)


def measure_memory_bandwidth(n_bytes: int = 1 << 30, iters: int = 5) -> float:
    """Read bandwidth, bytes/s: the best of `iters` jitted sums over an n_bytes fp32 array."""
    x = jax.numpy.ones((n_bytes // 4,), jax.numpy.float32)
    total = jax.jit(jax.numpy.sum)
    total(x).block_until_ready()
    return n_bytes / min(_seconds(lambda: total(x).block_until_ready()) for _ in range(iters))


def _ours_smol(config, params, prompts, new_tokens):
    settings = sampler.Settings(max_new_tokens=new_tokens, temperature=0.0)

    def run():
        s = sampler.Sampler(config, params, settings, batch_size=len(prompts))
        out = list(s.run(sampler.Request(p, key=i) for i, p in enumerate(prompts)))
        assert all(len(c.tokens) == new_tokens for c in out)

    return run


def _cold_and_best(runs: dict, rounds: int) -> tuple[dict, dict]:
    """First-call seconds of each run, and its best over `rounds` interleaved rounds after it."""
    cold = {name: _seconds(fn) for name, fn in runs.items()}
    best = {name: float("inf") for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            best[name] = min(best[name], _seconds(fn))
    return cold, best


def _smol_section() -> str:
    import torch
    import transformers

    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOL_SHAPE)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf_model.save_pretrained(d)
        config, params = hf.load(d)  # fp32 weights, bf16 compute (the LlamaConfig default)
    models = {"bf16": copy.deepcopy(hf_model).to(torch.bfloat16), "fp32": hf_model}
    bandwidth = measure_memory_bandwidth()
    peak = max(metrics.measure_matmul_peak(2048, iters=10) for _ in range(3))
    # Matmul weights of a decode step: all but the embedding lookup (the tied table is read
    # once, as the output layer).
    n_matmul = llama.num_params(config) - config.vocab_size * config.hidden
    weight_read_s = 2 * n_matmul / bandwidth
    rng = np.random.default_rng(0)
    rows, verdicts = [], []
    for batch, prompt_len in SMOL_PROMPTS.items():
        prompts = rng.integers(3, config.vocab_size, (batch, prompt_len)).tolist()
        runs = {("megadoc", "prefill"): _ours_smol(config, params, prompts, 1),
                ("megadoc", "full"): _ours_smol(config, params, prompts, SMOL_NEW_TOKENS)}
        if batch == SMOL_VS_TORCH_BATCH:
            for dtype in ("bf16", "fp32"):
                runs[(f"transformers {dtype}", "prefill")] = _theirs_smol(
                    torch, models[dtype], prompts, 1)
                runs[(f"transformers {dtype}", "full")] = _theirs_smol(
                    torch, models[dtype], prompts, SMOL_NEW_TOKENS)
        cold, best = _cold_and_best(runs, SMOL_ROUNDS)
        speed = {}
        for impl in dict.fromkeys(name for name, _ in runs):
            pre, full = best[(impl, "prefill")], best[(impl, "full")]
            if impl.startswith("transformers"):  # no compile: its first calls count too
                pre, full = min(pre, cold[(impl, "prefill")]), min(full, cold[(impl, "full")])
            decode = batch * (SMOL_NEW_TOKENS - 1) / (full - pre)
            total = batch * SMOL_NEW_TOKENS / full
            speed[impl] = (decode, total)
            compile_s = (f"{cold[(impl, 'prefill')] - pre + cold[(impl, 'full')] - full:.0f}"
                         if impl == "megadoc" else "–")
            rows.append(f"| {batch} | {prompt_len} | {impl} | {batch * prompt_len / pre:,.0f} | "
                        f"{decode:,.1f} | {total:,.1f} | {compile_s} |")
        if batch == SMOL_VS_TORCH_BATCH:
            torch_total = max(v[1] for k, v in speed.items() if k != "megadoc")
            torch_decode = max(v[0] for k, v in speed.items() if k != "megadoc")
            ratio = speed["megadoc"][1] / torch_total
            verdicts.append(
                f"Batch {batch}: megadoc / faster transformers, new tokens/s end to end: "
                f"**{ratio:.2f}×** (decode alone {speed['megadoc'][0] / torch_decode:.2f}×; goal "
                f"≥ 5×). Verdict: {'meets' if ratio >= 5 else 'does not meet'} the goal.")
        else:
            step_bound_s = max(weight_read_s, 2 * n_matmul * batch / peak)
            fraction = speed["megadoc"][0] / (batch / step_bound_s)
            verdicts.append(
                f"Batch {batch}: decode {speed['megadoc'][0]:,.1f} tok/s is **{100 * fraction:.0f}%** "
                f"of the roofline bound {batch / step_bound_s:,.0f} tok/s (a step: weight read "
                f"{1e3 * weight_read_s:.0f} ms, matmuls {1e3 * 2 * n_matmul * batch / peak:.0f} ms; "
                f"goal ≥ 50%). Verdict: {'meets' if fraction >= 0.5 else 'does not meet'} the goal.")
    return "\n".join([
        "## Sampler at the SmolLM2-135M shape",
        "",
        f"Random Llama at SmolLM2-135M's shape (hidden {config.hidden}, ffn {config.ffn}, "
        f"{config.layers} layers, {config.heads}/{config.kv_heads} heads, head dim "
        f"{config.head_dim}, vocab {config.vocab_size}, tied embeddings; {n_matmul / 1e6:.1f}M "
        f"matmul weights), megadoc fp32 weights with {config.dtype} compute, greedy, "
        f"{SMOL_NEW_TOKENS} new tokens per sequence. Prefill = a run with max_new_tokens=1; decode "
        f"= what the full run adds per new token; compile = cold minus best warm runs (megadoc). "
        f"Best of {SMOL_ROUNDS} interleaved rounds; transformers {transformers.__version__} "
        f"`generate` with torch's default {torch.get_num_threads()} threads. Measured memory "
        f"bandwidth (fp32 sum over 1 GiB): {bandwidth / 1e9:.1f} GB/s; matmul peak (2048², "
        f"bf16 values in {matmul.dot_dtype(jnp.bfloat16).name} dots, fp32 accumulation): "
        f"{peak / 1e9:,.0f} GFLOP/s.",
        "",
        "| batch | prompt | implementation | prefill tok/s | decode tok/s | new tok/s end to end "
        "| compile s |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        *[v + "\n" for v in verdicts],
    ]).rstrip()


def _theirs_smol(torch, model, prompts, new_tokens):
    ids = torch.tensor(prompts)

    def run():
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=None, pad_token_id=0)
        assert out.shape[1] == len(prompts[0]) + new_tokens

    return run


def _formula(config) -> int:
    """Bytes per cached token: keys and values of every layer in the cache's storage dtype (fp32
    on XLA:CPU, else the compute dtype: `llama.cache_dtype`)."""
    return 2 * config.layers * config.kv_heads * config.head_dim * llama.cache_dtype(config).itemsize


if __name__ == "__main__":
    print(run())
