"""The sampler planned for a slice before it runs: the prefill, insert and decode steps of
`sampler.Sampler`, compiled for the slice's devices from abstract weights and cache (no
arrays), with memory per device, FLOPs and an estimated decode rate (experiments.plan)."""
from __future__ import annotations

from megadoc import compiled as compiled_lib
from megadoc.models import llama, platform, sharding
from megadoc.synth import sampler


def sampler_plan(config: llama.LlamaConfig, devices, *, tensor_parallel: int, batch_size: int,
                 prompt_len: int, max_new_tokens: int, chip=None,
                 efficiency: float = 0.4) -> dict:
    """{"prefill": plan, "insert": plan, "decode": plan, ...}: prefill is PREFILL_ROWS prompts
    into the prompt store, insert a whole batch of samples started from it; decode's FLOPs,
    bytes and time are per decode step (one token for each of `batch_size` slots), a step
    reading every weight and the slots' whole cache; the job fits when every step does."""
    mesh = sharding.make_mesh(tensor=tensor_parallel, devices=devices)
    shards = len(devices) // tensor_parallel
    if batch_size % shards:
        raise ValueError(f"batch_size {batch_size} does not split over the mesh's {shards} "
                         f"batch shards ({len(devices)} devices / tensor_parallel "
                         f"{tensor_parallel}): use a multiple of {shards}")
    settings = sampler.Settings(max_new_tokens=max_new_tokens)
    with platform.target(devices[0].platform):
        traced = sampler.traced_steps(config, settings, mesh, batch_size=batch_size,
                                      prompt_len=prompt_len)
        inputs = {n: traced[n] for n in ("params", "cache", "prompt_store")}
        prompt_tokens = sampler.PREFILL_ROWS * prompt_len
        prefill_model = 2.0 * (llama.num_params(config) - config.vocab_size * config.hidden)
        prefill = compiled_lib.plan_report(traced["prefill"], mesh, chip, inputs, prompt_tokens,
                                           efficiency, prefill_model * prompt_tokens)
        insert = compiled_lib.plan_report(  # a copy of stored prompt rows: no model FLOPs
            traced["insert"], mesh, chip, inputs, batch_size, efficiency, 0.0,
            bytes_read=compiled_lib.shard_bytes(traced["prompt_store"]))
        read = sum(compiled_lib.shard_bytes(traced[n]) for n in ("params", "cache"))
        decode = compiled_lib.plan_report(traced["decode"], mesh, chip, inputs, batch_size,
                                          efficiency, prefill_model * batch_size,
                                          bytes_read=read)
    steps = {"prefill": prefill, "insert": insert, "decode": decode}
    return {"fits": all(p["fits"] for p in steps.values()),
            "total_bytes": max(p.get("total_bytes", 0) for p in steps.values()),
            "mesh": dict(zip(sharding.AXES, mesh.shape.values())),
            "batch_size": batch_size, "prompt_len": prompt_len,
            "max_new_tokens": max_new_tokens, "cache_len": traced["cache"]["k"].shape[2],
            **steps}
