"""Compile a job for a TPU slice on any machine: does it fit, and how fast will it run?

    python -m experiments.plan --job=train --preset=300m --topology=v4-64 --output=plan.json \\
        [--seq_len=4096 --global_batch=64 --microbatches=N --remat=dots --fsdp=-1 --tensor=1]
    python -m experiments.plan --job=eval --preset=300m --topology=v4-64 --global_batch=64
    python -m experiments.plan --job=synthesize --generator=llama3-8b --topology=v4-8 \\
        --tensor_parallel=4 --batch_size=64 --prompt_len=1024 --max_new_tokens=1024

Needs libtpu (`pip install -e '.[tpu]'`), no TPU. megadoc's own jitted steps are traced from
abstract shapes (no data, no weights) and compiled by the TPU compiler for the slice; the plan
(JSON at --output, a table on stdout) gives per device the params, optimizer state, temporaries
and total (`total_bytes`) against the chip's HBM, `fits`, FLOPs, the collectives, and a step
time at --efficiency of the chip's peak. A train step that does not fit is followed by the
smallest change that does, found by compiling candidates. Fields: megadoc/compiled.py.
"""
from __future__ import annotations

import dataclasses
import json
import os

# A plan only compiles: it never claims the TPU of the host it runs on (a training job may).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags

from megadoc import cli


@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """What to plan, and for which slice."""
    job: str = "train"
    """train | eval | synthesize"""
    topology: str = "v4-8"
    """the TPU slice, as Cloud TPU names it: v4-8 … v4-256, v5e-N, v5p-N, v6e-N"""
    output: str = "plan.json"
    """where the plan is written (JSON)"""
    preset: str = "300m"
    """train/eval: the training preset (model, global batch, rows per device, remat)"""
    seq_len: int = 4096
    """train/eval: tokens per window"""
    vocab_size: int = 128256
    """train/eval: the tokenizer's vocabulary (Llama 3's by default)"""
    global_batch: int = 0
    """train: windows per step; eval: windows per batch (0: the preset's)"""
    microbatches: int = 0
    """train: gradient-accumulation slices (0: from the preset's rows per device and the mesh)"""
    remat: str = ""
    """train: none | dots | full (empty: the preset's)"""
    data: int = 1
    """mesh: data-parallel size"""
    fsdp: int = -1
    """mesh: FSDP size (-1: the devices left)"""
    tensor: int = 1
    """mesh: tensor-parallel size"""
    generator: str = "llama3-8b"
    """synthesize: the generator's model preset"""
    tensor_parallel: int = 4
    """synthesize: devices each generator copy spans"""
    batch_size: int = 64
    """synthesize: sampler slots (sequences decoded together)"""
    prompt_len: int = 1024
    """synthesize: tokens of a prompt"""
    max_new_tokens: int = 1024
    """synthesize: tokens generated per sample"""
    efficiency: float = 0.4
    """fraction of the chip's peak FLOP/s (and HBM bandwidth) the time estimate assumes"""
    search: bool = True
    """train: when the step does not fit, compile candidates for the smallest change that does"""


FLAGS = flags.FlagValues()
cli.define_fields(PlanConfig, FLAGS, choices={"job": ("train", "eval", "synthesize"),
                                              "remat": ("", "none", "dots", "full")})


def plan(cfg: PlanConfig) -> dict:
    """The plan the config asks for, as written to --output."""
    from megadoc import compiled
    from megadoc.models import llama

    slice_ = compiled.parse_slice(cfg.topology)
    devices = compiled.slice_devices(slice_)
    head = {"job": cfg.job, "topology": cfg.topology, "chips": len(devices),
            "chip": slice_.chip.kind}
    if cfg.job == "synthesize":
        from megadoc.synth import plan as synth_plan

        return head | synth_plan.sampler_plan(
            llama.preset(cfg.generator), devices, tensor_parallel=cfg.tensor_parallel,
            batch_size=cfg.batch_size, prompt_len=cfg.prompt_len,
            max_new_tokens=cfg.max_new_tokens, chip=slice_.chip, efficiency=cfg.efficiency)
    from megadoc.train import config, plan as train_plan

    preset = config.preset(cfg.preset)
    if preset.model is None:
        raise ValueError(f"--preset={cfg.preset} takes its model from --init; plan a named size")
    model = dataclasses.replace(llama.preset(preset.model), vocab_size=cfg.vocab_size)
    batch = cfg.global_batch or preset.global_batch
    mesh = _mesh(cfg, len(devices))
    shards = mesh[0] * mesh[1]
    head |= {"preset": cfg.preset, "seq_len": cfg.seq_len, "global_batch": batch}
    if cfg.job == "eval":
        return head | train_plan.eval_plan(model, train_plan.Layout(1, "none", mesh), devices,
                                           batch, cfg.seq_len, slice_.chip, cfg.efficiency)
    layout = train_plan.Layout(
        cfg.microbatches or config.microbatches_for(batch, shards, preset.rows_per_device),
        cfg.remat or preset.remat, mesh)
    result = train_plan.train_plan(model, layout, devices, batch, cfg.seq_len, slice_.chip,
                                   cfg.efficiency)
    if not result["fits"] and cfg.search:
        fitting, tried = train_plan.smallest_fitting_change(
            model, layout, devices, batch, cfg.seq_len, slice_.chip, cfg.efficiency)
        result |= {"advice": train_plan.advice(layout, fitting), "candidates": tried,
                   "fitting_plan": fitting}
    return head | result


def _mesh(cfg: PlanConfig, devices: int) -> tuple[int, int, int]:
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = 1
    for s in sizes:
        known *= s if s != -1 else 1
    if sizes.count(-1) > 1 or devices % known:
        raise ValueError(f"mesh data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} does "
                         f"not fit {devices} devices")
    return tuple(devices // known if s == -1 else s for s in sizes)


def table(result: dict) -> str:
    """The plan as a few readable lines."""
    gib = 1024**3
    lines = [f"{result['job']} on {result['topology']} ({result['chips']} {result['chip']} "
             f"chips): {'FITS' if result['fits'] else 'DOES NOT FIT'}"]
    parts = [("", result)] if result["job"] != "synthesize" else [
        (f"{k}: ", result[k]) for k in ("prefill", "insert", "decode")]
    for prefix, p in parts:
        if "microbatches" in p:
            lines.append(f"  {prefix}microbatches {p['microbatches']}, remat {p['remat']}, "
                         f"mesh {p['mesh']}")
        sizes = ", ".join(f"{k.removesuffix('_bytes')} {p[k] / gib:.2f}" for k in p
                          if k.endswith("_bytes") and k not in ("hbm_bytes",))
        lines.append(f"  {prefix}GiB per device: {sizes} (HBM {p.get('hbm_bytes', 0) / gib:.2f})")
        if "error" in p:
            lines.append(f"  {prefix}compiler: {p['error']}")
        if "step_seconds" in p and p["model_flops_per_step"]:  # insert: a copy, no model
            lines.append(f"  {prefix}{p['flops_per_step']:.3e} FLOPs per step "
                         f"({p['flops_per_step'] / p['model_flops_per_step']:.3f}x the MFU "
                         f"count); {p['step_seconds'] * 1e3:.1f} ms per step, "
                         f"{p['tokens_per_second']:,.0f} tokens/s at {p['efficiency']:.0%} "
                         f"of peak")
        for op, c in sorted(p.get("collectives", {}).items()):
            lines.append(f"  {prefix}{op}: {c['count']} ops, {c['bytes'] / gib:.2f} GiB")
    if "advice" in result:
        lines.append(f"  advice: {result['advice']}")
    return "\n".join(lines)


def main(argv):
    del argv
    from megadoc import fs

    cfg = PlanConfig(**cli.field_values(PlanConfig, FLAGS))
    result = plan(cfg)
    fs.write_text(cfg.output, json.dumps(result, indent=1) + "\n")
    print(table(result), flush=True)
    print(f"[plan] wrote {cfg.output}", flush=True)


if __name__ == "__main__":
    cli.run(main, flags_parser=cli.parser(FLAGS))
