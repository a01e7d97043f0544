"""The sampler planned for a slice before it runs: the prefill and decode steps of
`sampler.Sampler`, compiled for the slice's devices from abstract weights and cache (no
arrays), with memory per device, FLOPs and an estimated decode rate (experiments.plan)."""
from __future__ import annotations

from megadoc import compiled as compiled_lib
from megadoc.models import llama, platform, sharding
from megadoc.synth import sampler


def sampler_plan(config: llama.LlamaConfig, devices, *, tensor_parallel: int, batch_size: int,
                 prompt_len: int, max_new_tokens: int, chip=None,
                 efficiency: float = 0.4) -> dict:
    """{"prefill": plan, "decode": plan, ...}: decode's FLOPs, bytes and time are per decode
    step (one token for each of `batch_size` slots), a step reading every weight and the
    whole cache; the job fits when both steps do."""
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
        inputs = {"params": traced["params"], "cache": traced["cache"]}
        rows = min(batch_size, sampler.PREFILL_ROWS)
        prompt_tokens = rows * prompt_len
        prefill_model = 2.0 * (llama.num_params(config) - config.vocab_size * config.hidden)
        prefill = compiled_lib.plan_report(traced["prefill"], mesh, chip, inputs, prompt_tokens,
                                           efficiency, prefill_model * prompt_tokens)
        read = sum(compiled_lib.shard_bytes(t) for t in inputs.values())
        decode = compiled_lib.plan_report(traced["decode"], mesh, chip, inputs, batch_size,
                                          efficiency, prefill_model * batch_size,
                                          bytes_read=read)
    return {"fits": prefill["fits"] and decode["fits"],
            "total_bytes": max(prefill.get("total_bytes", 0), decode.get("total_bytes", 0)),
            "mesh": dict(zip(sharding.AXES, mesh.shape.values())),
            "batch_size": batch_size, "prompt_len": prompt_len,
            "max_new_tokens": max_new_tokens, "cache_len": traced["cache"]["k"].shape[2],
            "prefill": prefill, "decode": decode}
