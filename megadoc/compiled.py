"""What XLA's compiler says about a function compiled for a slice this host may not have.

With libtpu installed (`pip install -e '.[tpu]'`) jax describes any TPU slice on a CPU-only
machine (`slice_devices("v4-64")`), and `jit(f).trace(abstract args).lower().compile()` runs the
real TPU compiler for it: the memory each device needs, the compiled FLOPs and the collectives
are known before a slice is booked (MaxText's `train_compile.py` does the same).

Two counts of FLOPs, because XLA's cost analysis counts the body of every while loop once
(a `lax.scan` over 12 layers and 4 microbatches reports one layer of one microbatch):
`program_flops` walks the traced program instead and multiplies each scan body by its length
(every dot_general: 2 · output elements · contracted size; kernels by their own cost estimate).
This module knows nothing of megadoc's models: megadoc.train.plan and megadoc.synth.plan use it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
from jax.extend import core

GiB = 1024**3


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, as a planner needs it (public spec sheets; bf16 dense peak)."""
    kind: str
    """jax's topology prefix (v4, v5p, v5e, v6e)"""
    hbm_bytes: float
    """memory per chip (what a jax device of the slice holds)"""
    peak_flops: float
    """bf16 dense FLOP/s per chip"""
    hbm_bandwidth: float
    """bytes/s per chip"""
    cores_in_name: int
    """TensorCores per chip counted by the slice name (v4-8 is 4 chips, v5e-8 is 8)"""
    torus_dims: int
    """2 or 3: the slice's chip grid"""


CHIPS = {
    "v4": Chip("v4", 32 * GiB, 275e12, 1.2e12, cores_in_name=2, torus_dims=3),
    "v5p": Chip("v5p", 95 * GiB, 459e12, 2.765e12, cores_in_name=2, torus_dims=3),
    "v5e": Chip("v5e", 16 * GiB, 197e12, 0.819e12, cores_in_name=1, torus_dims=2),
    "v6e": Chip("v6e", 32 * GiB, 918e12, 1.64e12, cores_in_name=1, torus_dims=2),
}

# Chip grids by chip count, as Cloud TPU names them (v4-64 = 32 chips = 2x4x4).
_GRIDS = {3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
              256: "4x8x8", 512: "8x8x8"},
          2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
              256: "16x16"}}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str
    chip: Chip
    chips: int
    grid: str


def parse_slice(name: str) -> Slice:
    """`v4-64`, `v5e-16`, `v5p-8`, `v6e-4`, ... → the chips and grid of that slice."""
    kind, _, count = name.partition("-")
    if kind not in CHIPS or not count.isdigit():
        raise ValueError(f"unknown TPU slice {name!r}: expected GENERATION-N with GENERATION one "
                         f"of {', '.join(CHIPS)} (e.g. v4-64, v5e-16)")
    chip = CHIPS[kind]
    chips = int(count) // chip.cores_in_name
    grids = _GRIDS[chip.torus_dims]
    if chips not in grids:
        known = ", ".join(f"{kind}-{c * chip.cores_in_name}" for c in grids)
        raise ValueError(f"no {kind} slice {name!r}; known: {known}")
    return Slice(name, chip, chips, grids[chips])


def slice_devices(slice_: Slice) -> list:
    """The slice's devices, described by libtpu (no TPU needed). A process that runs on no TPU
    itself lets other processes load libtpu too (its lock guards chips this one never uses),
    so plans and tests can run side by side, and beside a training job."""
    if jax.default_backend() != "tpu":
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        kw = {"chip_config_name": "megacore"} if slice_.chip.kind == "v4" else {}
        desc = topologies.get_topology_desc(topology_name=f"{slice_.chip.kind}:{slice_.grid}",
                                            platform="tpu", **kw)
    except Exception as e:  # jax raises RuntimeError/ValueError/ImportError here, by version
        raise ValueError(f"cannot describe {slice_.name} on this host ({e}); planning for TPU "
                         f"needs libtpu: pip install -e '.[tpu]'") from e
    return list(desc.devices)


# ----------------------------------------------------------------------------- memory

@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device, from the compiled executable (donated inputs alias their outputs)."""
    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def memory_of(executable) -> Memory:
    m = executable.memory_analysis()
    return Memory(m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes,
                  m.temp_size_in_bytes, m.generated_code_size_in_bytes)


def shard_bytes(abstract_tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (the most any
    device holds, leaf by leaf)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
               for x in jax.tree.leaves(abstract_tree))


def out_of_memory(error: Exception) -> str | None:
    """The compiler's message when `error` says the program does not fit, else None."""
    text = str(error)
    if "RESOURCE_EXHAUSTED" not in text and "exceeds available" not in text.lower():
        return None
    found = re.search(r"[^\n.]*(exceeds|Ran out of memory)[^\n]*", text)
    return (found.group(0) if found else text.splitlines()[0]).strip()[:400]


# ----------------------------------------------------------------------------- FLOPs

@dataclasses.dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of one call of a traced program, over all devices."""
    total: float
    while_once: bool
    """a while loop of unknown trip count was counted once"""
    kernels_uncounted: bool
    """a Pallas kernel without a cost estimate (TPU splash attention) was not counted"""


def program_flops(closed_jaxpr) -> Flops:
    """Matmuls only (dot_general), each scan body times its length, shard_map bodies times the
    devices that run them, Pallas kernels by their cost estimate; the elementwise rest is left
    out (a few percent of a transformer's)."""
    uncounted = []

    def walk(jaxpr, times) -> tuple[float, bool]:
        total, unknown = 0.0, False
        for eqn in jaxpr.eqns:
            name, params = eqn.primitive.name, eqn.params
            if name == "dot_general":
                (lhs_contract, _), _ = params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                total += times * 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
                    lhs[d] for d in lhs_contract)
                continue
            if name == "pallas_call":
                estimate = getattr(params.get("cost_estimate"), "flops", 0) or 0
                uncounted.append(not estimate)
                total += times * float(estimate)
                continue
            inner = times * {"scan": params.get("length", 1),
                             "shard_map": _mesh_size(params.get("mesh"))}.get(name, 1)
            unknown |= name == "while"
            for sub in _sub_jaxprs(params):
                f, u = walk(sub, inner)
                total, unknown = total + f, unknown or u
        return total, unknown

    total, unknown = walk(closed_jaxpr.jaxpr, 1)
    return Flops(total, unknown, any(uncounted))


def _mesh_size(mesh) -> int:
    return 1 if mesh is None else math.prod(dict(mesh.shape).values())


def _sub_jaxprs(params: dict):
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, core.Jaxpr):
                yield v


# ----------------------------------------------------------------------------- collectives

_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = (.+?) ([a-z][a-z0-9-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8e\w+)\[([\d,]*)\]")
_WIDTH = {"pred": 1, "bf16": 2}


def _shape_bytes(text: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        width = _WIDTH.get(dtype) or (1 if dtype.startswith("f8") else int(dtype[1:]) // 8)
        total += width * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives(hlo_text: str) -> dict:
    """{op: {"count", "bytes"}} over the optimized HLO of one device: each collective's result
    size, times the trip count of the loops it sits in (read from each loop condition's
    `i < N`; a loop whose bound is not a constant counts once)."""
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo_text.splitlines():
        found = _COMPUTATION.match(line)
        if found and line.rstrip().endswith("{"):
            current = computations.setdefault(found.group(1), [])
        elif current is not None and line.strip() and line.strip() != "}":
            current.append(line)
    calls: dict[str, list[tuple[str, int]]] = {name: [] for name in computations}
    for name, lines in computations.items():
        for line in lines:
            found = _INSTRUCTION.match(line)
            if not found:
                continue
            if found.group(2) == "while":
                body = re.search(r"body=%([^\s,]+)", line).group(1)
                cond = re.search(r"condition=%([^\s,]+)", line).group(1)
                calls[name].append((body, _trip_count(computations.get(cond, []))))
            for callee in re.findall(r"(?:calls|to_apply|branch_computations)=\{?%([^\s,}]+)",
                                     line):
                calls[name].append((callee, 1))
    times = {name: 0 for name in computations}
    entry = next(n for n in computations
                 if re.search(rf"^ENTRY %{re.escape(n)} ", hlo_text, re.M))

    def visit(name, t):
        times[name] += t
        for callee, n in calls.get(name, ()):
            if callee in computations:
                visit(callee, t * n)

    visit(entry, 1)
    out: dict[str, dict] = {}
    for name, lines in computations.items():
        for line in lines:
            found = _INSTRUCTION.match(line)
            if not found or times[name] == 0:
                continue
            op = found.group(2).removesuffix("-start")
            if op in _COLLECTIVES:
                entry_ = out.setdefault(op, {"count": 0, "bytes": 0})
                entry_["count"] += times[name]
                entry_["bytes"] += times[name] * _shape_bytes(found.group(1))
    return out


def _trip_count(condition: list[str]) -> int:
    """N of a loop condition `i < N` with a constant N; 1 when it is anything else."""
    constants = [int(c) for line in condition
                 for c in re.findall(r"= s32\[\]\S* constant\((\d+)\)", line)]
    compares_lt = any("direction=LT" in line for line in condition)
    return constants[0] if len(constants) == 1 and compares_lt else 1


# ----------------------------------------------------------------------------- the plan

def plan_report(traced, mesh, chip: Chip | None, inputs: dict, tokens: int, efficiency: float,
                model_flops: float, kernel_flops: float = 0.0, bytes_read: float = 0.0) -> dict:
    """The plan of one traced step: compile it for the mesh's devices and say what it needs.
    `inputs` names abstract argument trees whose per-device bytes are reported (params,
    optimizer state, batch, cache); `model_flops` is the count MFU uses, for comparison;
    `kernel_flops` is added for the attention kernels whose FLOPs the trace cannot see;
    `bytes_read` per device per call bounds the time from below by the HBM bandwidth (a decode
    step reads every weight and the cache)."""
    devices = mesh.devices.size
    counted = program_flops(traced.jaxpr)
    flops = counted.total + (kernel_flops if counted.kernels_uncounted else 0.0)
    note = "matmul FLOPs of the traced program, scan bodies times their length"
    note += ", while-loop bodies once" if counted.while_once else ""
    note += (", the splash attention kernel as 12·layers·heads·head_dim·seq per token (no "
             "causal saving)" if counted.kernels_uncounted else "")
    out = {"devices": devices,
           **{f"{name}_bytes": shard_bytes(tree) for name, tree in inputs.items()},
           "flops_per_step": flops, "flops_per_device": flops / devices,
           "model_flops_per_step": model_flops, "flops_note": note,
           "tokens_per_step": tokens, "efficiency": efficiency}
    if chip is not None:
        out["hbm_bytes"] = chip.hbm_bytes
    try:
        with jax.set_mesh(mesh):
            executable = traced.lower().compile()
    except Exception as e:  # XLA raises its own error types; only out-of-memory is an answer
        message = out_of_memory(e)
        if message is None:
            raise
        return out | {"fits": False, "error": message}
    memory = memory_of(executable)
    cost = executable.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    out |= {"argument_bytes": memory.arguments, "temp_bytes": memory.temporaries,
            "output_bytes": memory.outputs - memory.aliased, "code_bytes": memory.code,
            "total_bytes": memory.total,
            "xla_flops_per_device": cost.get("flops", 0.0),
            "xla_bytes_accessed_per_device": cost.get("bytes accessed", 0.0),
            "xla_cost_note": "XLA's cost analysis: every while-loop body (scan) counted once",
            "collectives": collectives(executable.as_text())}
    out["fits"] = chip is None or memory.total <= chip.hbm_bytes
    if chip is not None:
        seconds = step_seconds(flops / devices, chip, efficiency, bytes_read)
        out |= {"step_seconds": seconds, "tokens_per_second": tokens / seconds}
    return out


# ----------------------------------------------------------------------------- time

def step_seconds(flops_per_device: float, chip: Chip, efficiency: float,
                 bytes_per_device: float = 0.0) -> float:
    """Estimated seconds per call: the FLOPs at `efficiency` of the chip's peak, or the bytes
    read at `efficiency` of its HBM bandwidth, whichever is slower."""
    return max(flops_per_device / (chip.peak_flops * efficiency),
               bytes_per_device / (chip.hbm_bandwidth * efficiency))
