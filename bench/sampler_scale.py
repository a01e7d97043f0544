"""Synthesis at the paper's shape of work: 32 samples per prompt through continuous batching.

1. The tiny model with uniform logits (the issue's harness): batch 64, 32 samples per 300-token
   prompt, generation lengths geometric with mean ~380 (one stop token among 412 equally likely
   ones) cut at 1,024. Reports the sampler's `Cost`: prefill positions per prompt token, useful
   decode row-steps (all, and in steady state), attended positions that were needed.
2. The SmolLM2-135M shape (random weights), 32 samples per 300-token document, sampled at
   temperature 1 with every 64th id a stop token (lengths ~geometric, mean ~64, cut at 256):
   end-to-end generated tokens/s of this sampler and of the sampler as of commit BEFORE (loaded
   from git into this process), interleaved: a warm-up run each, then ROUNDS rounds, best kept.
   Their outputs are compared too (the same per-(request, sample, token) keys).

Run: `python -m bench.sampler_scale [tiny] [smol]` (prints a Markdown section; not in `make bench`,
since it needs the git history for BEFORE).
"""
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from megadoc.models import llama  # noqa: E402
from megadoc.synth import sampler  # noqa: E402

BEFORE = "87a50872b0a770b88e9e906c8b2e2f15c9cf4a09"  # the sampler that prefilled per admission
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOL_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                  max_position_embeddings=2048, rope_theta=100000.0, tie_word_embeddings=True)
SMOL_DOCS, SAMPLES, PROMPT_LEN, SMOL_MAX_NEW, STOP_EVERY = 3, 32, 300, 256, 64
ROUNDS = 1
TINY_PROMPTS = 8


def old_sampler_module():
    source = subprocess.check_output(["git", "show", f"{BEFORE}:megadoc/synth/sampler.py"],
                                     cwd=REPO)
    spec = importlib.util.spec_from_loader("sampler_before", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sampler_before"] = module  # dataclasses look their module up
    exec(compile(source, "sampler_before.py", "exec"), module.__dict__)
    return module


def tiny_section() -> str:
    config = dataclasses.replace(llama.preset("tiny"), vocab_size=412, max_seq_len=2048)
    params = llama.init(config, jax.random.PRNGKey(0))
    params["lm_head"] = jnp.zeros_like(params["lm_head"])  # uniform logits
    settings = sampler.Settings(max_new_tokens=1024, temperature=1.0, stop_tokens=(0,))
    s = sampler.Sampler(config, params, settings, batch_size=64, seed=0)
    rng = np.random.default_rng(0)
    requests = [sampler.Request(rng.integers(1, 412, PROMPT_LEN).tolist(), key=i,
                                num_samples=SAMPLES) for i in range(TINY_PROMPTS)]
    out = list(s.run(requests))
    lengths = [len(c.tokens) + (c.finish_reason == "eos") for c in out]
    c = s.cost
    return "\n".join([
        "### Tiny model, uniform logits (the issue's harness)", "",
        f"{TINY_PROMPTS} prompts × {SAMPLES} samples, batch 64, prompts {PROMPT_LEN} tokens; "
        f"generation lengths: mean {np.mean(lengths):.0f}, "
        f"{100 * np.mean([x == 1024 for x in lengths]):.1f}% at the 1,024 cap.", "",
        "| measure | value |", "|---|---|",
        f"| prompts prefilled / prompts | {c.prompts} / {TINY_PROMPTS} |",
        f"| prefill positions / prompt tokens | {c.prefill_positions / c.prompt_tokens:.3f} |",
        "| useful decode row-steps, steady state | "
        f"{c.steady_useful_row_steps / c.steady_row_steps:.1%} |",
        "| useful decode row-steps, whole run (incl. the drain) | "
        f"{c.useful_row_steps / c.row_steps:.1%} |",
        f"| attended positions needed | {c.needed_positions / c.attended_positions:.1%} |",
    ])


def smol_section() -> str:
    import torch  # noqa: F401  (transformers needs it)
    import transformers

    from megadoc.models import hf

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMOL_SHAPE))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        config, params = hf.load(d)
    del model
    old = old_sampler_module()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, config.vocab_size, PROMPT_LEN).tolist() for _ in range(SMOL_DOCS)]
    stops = tuple(range(0, config.vocab_size, STOP_EVERY))
    prefill_positions = {}

    def runner(module, name):
        settings = module.Settings(max_new_tokens=SMOL_MAX_NEW, temperature=1.0,
                                   stop_tokens=stops)

        def run():
            s = module.Sampler(config, params, settings, batch_size=64, seed=1)
            reqs = [module.Request(p, key=i, num_samples=SAMPLES) for i, p in enumerate(prompts)]
            start = time.perf_counter()
            out = {(c.request.key, c.sample): c.tokens for c in s.run(reqs)}
            seconds = time.perf_counter() - start
            tokens = sum(len(t) for t in out.values())
            if hasattr(s, "cost"):
                prefill_positions[name] = s.cost.prefill_positions
            return seconds, tokens, out

        return run

    real_insert = old._insert

    def counting_insert(config_, settings_, mesh_, params_, state, admission, seed):
        """The old sampler prefills in every admission: count the rows x length it ran."""
        prefill_positions["before"] = prefill_positions.get("before", 0) + \
            admission.tokens_PxL.size
        return real_insert(config_, settings_, mesh_, params_, state, admission, seed)

    old._insert = counting_insert
    runs = {"before": runner(old, "before"), "after": runner(sampler, "after")}
    cold = {name: run() for name, run in runs.items()}
    best, outputs = {}, {}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            prefill_positions.pop(name, None)
            seconds, tokens, out = run()
            outputs[name] = out
            best[name] = min(best.get(name, (float("inf"), 0)), (seconds, tokens))
    same = outputs["before"] == outputs["after"]
    rows = [f"| {name} | {cold[name][0]:.0f} | {best[name][0]:.1f} | {best[name][1]:,} | "
            f"{best[name][1] / best[name][0]:.1f} | "
            f"{prefill_positions[name] / (SMOL_DOCS * PROMPT_LEN):.1f} |" for name in runs]
    ratio = (best["after"][1] / best["after"][0]) / (best["before"][1] / best["before"][0])
    return "\n".join([
        "### SmolLM2-135M shape, random weights: before and after", "",
        f"{SMOL_DOCS} documents × {SAMPLES} samples, {PROMPT_LEN}-token prompts, batch 64, "
        f"temperature 1, every {STOP_EVERY}th id a stop token, at most {SMOL_MAX_NEW} new "
        f"tokens; fp32 weights, {config.dtype} compute. before = `megadoc/synth/sampler.py` at "
        f"{BEFORE[:7]}, loaded into the same process; best of {ROUNDS} interleaved round(s) "
        "after a cold run each (cold includes compiles).", "",
        "| sampler | cold s | warm s | generated tokens | generated tok/s end to end | "
        "prefill positions / prompt token |",
        "|---|---|---|---|---|---|",
        *rows, "",
        f"after / before, generated tokens/s end to end: **{ratio:.2f}×**; identical outputs: "
        f"{same}.",
    ])


def run(sections=("tiny", "smol")) -> str:
    load = os.getloadavg()[0]
    parts = {"tiny": tiny_section, "smol": smol_section}
    return "\n".join([
        "## Sampler at 32 samples per prompt (bench/sampler_scale.py)", "",
        f"Command: `python -m bench.sampler_scale {' '.join(sections)}`; load average at start "
        f"{load:.1f} on {os.cpu_count()} cores.", "",
        *("\n".join([parts[name](), ""]) for name in sections)])


if __name__ == "__main__":
    print(run(tuple(sys.argv[1:]) or ("tiny", "smol")))
