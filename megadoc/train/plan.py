"""A training or evaluation step planned for a mesh before it runs: memory per device, FLOPs,
collectives, an estimated step time, and, when it does not fit, the smallest change that does.

The functions compiled are megadoc's own (`step.make_train_step`, `step.make_eval_step`), traced
from abstract state and batch (no arrays, no data) and compiled by XLA for the mesh's devices,
which may be a TPU slice this host does not have (`megadoc.compiled.slice_devices`).
`experiments.plan` prints these plans; `loop.train` compiles its step the same way before
reading any data and stops with the advice when it does not fit.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from megadoc import compiled as compiled_lib
from megadoc.data import host_rows
from megadoc.models import llama, platform, sharding
from megadoc.train import config as config_lib
from megadoc.train import metrics
from megadoc.train import optimizer as optimizer_lib
from megadoc.train import state as state_lib
from megadoc.train import step as step_lib

# A plan only needs the optimizer's state shapes; these numbers change none.
_OPTIMIZER = config_lib.OptimizerConfig(lr=1e-3, weight_decay=0.1)
MAX_CANDIDATES = 6


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a plan may change to make a step fit."""
    microbatches: int
    remat: str
    mesh: tuple[int, int, int]  # data, fsdp, tensor: resolved sizes


def abstract_batch(global_batch: int, seq_len: int, mesh) -> dict:
    """The batch a step takes, as ShapeDtypeStructs laid out on the mesh (windows of
    seq_len + 1 tokens)."""
    rows = sharding.batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((global_batch, seq_len + 1), jnp.int32, sharding=rows)
            for k in ("tokens", "segment_ids")}


def batch_shards(mesh) -> int:
    return host_rows.num_shards(sharding.batch_sharding(mesh))


def train_plan(model_config: llama.LlamaConfig, layout: Layout, devices, global_batch: int,
               seq_len: int, chip=None, efficiency: float = 0.4) -> dict:
    """The plan of the train step with this layout on `devices`."""
    mesh = sharding.make_mesh(*layout.mesh, devices=devices)
    config_lib.check_batch_split(global_batch, layout.microbatches, batch_shards(mesh))
    model = dataclasses.replace(model_config, remat=layout.remat, max_seq_len=seq_len)
    optimizer = optimizer_lib.make(_OPTIMIZER, 1000)
    with platform.target(devices[0].platform):
        step = step_lib.make_train_step(
            model, optimizer, optimizer_lib.lr_schedule(_OPTIMIZER, 1000),
            state_lib.shardings(model, optimizer, mesh), mesh, layout.microbatches)
        state = state_lib.abstract(model, optimizer, mesh)
        batch = abstract_batch(global_batch, seq_len, mesh)
        traced = step.trace(state, batch, _scalar(mesh))
        tokens = global_batch * seq_len
        out = compiled_lib.plan_report(traced, mesh, chip, {"params": state["params"],
                                          "opt_state": state["opt_state"], "batch": batch},
                     tokens, efficiency, metrics.flops_per_token(model, seq_len) * tokens,
                     attention_flops(model, seq_len) * tokens)
    return _layout_fields(layout) | out


def eval_plan(model_config: llama.LlamaConfig, layout: Layout, devices, batch_size: int,
              seq_len: int, chip=None, efficiency: float = 0.4) -> dict:
    """The plan of the eval step (one batch of `batch_size` windows) on `devices`."""
    mesh = sharding.make_mesh(*layout.mesh, devices=devices)
    config_lib.check_batch_split(batch_size, 1, batch_shards(mesh))
    model = dataclasses.replace(model_config, max_seq_len=seq_len)
    with platform.target(devices[0].platform):
        param_sh = llama.param_shardings(model, mesh)
        step = step_lib.make_eval_step(functools.partial(step_lib.token_losses, model),
                                       param_sh, mesh)
        params = state_lib.abstract(model, optimizer_lib.make(_OPTIMIZER, 1000), mesh)["params"]
        batch = abstract_batch(batch_size, seq_len, mesh)
        weights = jax.ShapeDtypeStruct((batch_size,), jnp.float32, sharding=NamedSharding(
            mesh, P(sharding.batch_sharding(mesh).spec[0])))
        tokens = batch_size * seq_len
        out = compiled_lib.plan_report(step.trace(params, batch, weights), mesh, chip,
                     {"params": params, "batch": batch}, tokens, efficiency,
                     metrics.flops_per_token(model, seq_len) / 3 * tokens,
                     attention_flops(model, seq_len) / 3 * tokens)
    return _layout_fields(dataclasses.replace(layout, microbatches=1, remat="none")) | out


def attention_flops(model: llama.LlamaConfig, seq_len: int) -> float:
    """Attention's training FLOPs per token, as `metrics.flops_per_token` counts them."""
    return 12.0 * model.layers * model.heads * model.head_dim * seq_len


def _layout_fields(layout: Layout) -> dict:
    return {"microbatches": layout.microbatches, "remat": layout.remat,
            "mesh": dict(zip(sharding.AXES, layout.mesh))}


def _scalar(mesh):
    return jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))


def candidates(layout: Layout, global_batch: int) -> list[Layout]:
    """Layouts that need less memory, nearest first: more microbatches (each still giving
    every batch shard a row), then a stronger remat policy (with the same or more
    microbatches), then fsdp taking over the data axis."""
    data, fsdp, tensor = layout.mesh
    shards = data * fsdp
    more = [m for m in range(layout.microbatches + 1, global_batch + 1)
            if global_batch % m == 0 and (global_batch // m) % shards == 0]
    stronger = list(llama.REMAT_POLICIES[llama.REMAT_POLICIES.index(layout.remat) + 1:]) \
        if layout.remat != "full" else []
    stronger = [r for r in ("dots", "full") if r in stronger]
    out = [dataclasses.replace(layout, microbatches=m) for m in more]
    out += [dataclasses.replace(layout, remat=r, microbatches=m)
            for r in stronger for m in [layout.microbatches, *more]]
    if data > 1:
        out.append(dataclasses.replace(layout, mesh=(1, data * fsdp, tensor)))
    return out


def smallest_fitting_change(model_config, layout: Layout, devices, global_batch: int,
                            seq_len: int, chip=None, efficiency: float = 0.4,
                            limit: int = MAX_CANDIDATES) -> tuple[dict | None, list[dict]]:
    """(the plan of the first candidate layout that fits, every candidate tried), compiling at
    most `limit` of them."""
    tried = []
    for candidate in candidates(layout, global_batch)[:limit]:
        plan = train_plan(model_config, candidate, devices, global_batch, seq_len, chip,
                          efficiency)
        tried.append({k: plan.get(k) for k in ("microbatches", "remat", "mesh", "fits",
                                               "total_bytes", "error")})
        if plan["fits"]:
            return plan, tried
    return None, tried


def advice(layout: Layout, fitting: dict | None) -> str:
    """The flags that turn `layout` into the fitting plan's, or that nothing tried fits."""
    if fitting is None:
        return ("no layout tried fits: use a larger slice, a smaller model, or a shorter "
                "sequence")
    changes = []
    if fitting["microbatches"] != layout.microbatches:
        changes.append(f"--microbatches={fitting['microbatches']}")
    if fitting["remat"] != layout.remat:
        changes.append(f"--remat={fitting['remat']}")
    mesh = tuple(fitting["mesh"].values())
    if mesh != layout.mesh:
        changes.append(f"--mesh={','.join(map(str, mesh))}")
    return (f"{' '.join(changes)} fits: {fitting['total_bytes'] / compiled_lib.GiB:.2f} GiB "
            f"per device")


def compile_or_advise(train_step, model_config, layout: Layout, mesh, global_batch: int,
                      seq_len: int, optimizer) -> None:
    """Compile the loop's own train step ahead of its first call (the compile it needs anyway);
    when XLA says it does not fit the devices, search for the smallest change that does and
    raise ValueError with it."""
    state = state_lib.abstract(model_config, optimizer, mesh)
    try:
        train_step.compile(state, abstract_batch(global_batch, seq_len, mesh), _scalar(mesh))
    except Exception as e:  # XLA raises its own error types; only out-of-memory is ours
        message = compiled_lib.out_of_memory(e)
        if message is None:
            raise
        devices = list(mesh.devices.flat)
        fitting, _ = smallest_fitting_change(model_config, layout, devices, global_batch,
                                             seq_len, limit=4)
        raise ValueError(f"the train step does not fit the {len(devices)} devices "
                         f"({message}); {advice(layout, fitting)}") from e
