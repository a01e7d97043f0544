"""Mesh (data, fsdp, tensor) and the logical-axis rules that place every param and activation.
This module knows no model: a model names the logical axes of its arrays (llama.PARAM_AXES).

Each array dimension carries a logical name; RULES maps names to mesh axes, in order, and a mesh
axis is used at most once per array and only where its size divides the dimension (so tiny test
shapes fall back to replication instead of failing). Params shard FSDP-style over "fsdp" on their
hidden dimension and tensor-parallel over "tensor" on heads/ffn/vocab; the batch splits over
("data", "fsdp").
"""
import math

import jax
from jax.sharding import NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")

RULES = (
    ("batch", ("data", "fsdp")),
    ("vocab", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("ffn", ("tensor",)),
    ("embed", ("fsdp",)),
)

# Activations: the residual stream keeps its hidden dim whole ("act_embed" has no rule).
ACT_EMBED = ("batch", "seq", "act_embed")
ACT_HEADS = ("batch", "seq", "heads", "head_dim")
ACT_KV_HEADS = ("batch", "seq", "kv_heads", "head_dim")
ACT_FFN = ("batch", "seq", "ffn")
ACT_VOCAB = ("batch", "seq", "vocab")
GATHERED_EMBED = ("embed_vocab", "act_embed")


def make_mesh(data=-1, fsdp=1, tensor=1, devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    if data == -1:
        data = len(devices) // (fsdp * tensor)
    if data * fsdp * tensor != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} x tensor={tensor} does not cover "
                         f"{len(devices)} devices")
    return jax.make_mesh((data, fsdp, tensor), AXES,
                         axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def spec(logical_axes, shape, mesh) -> P:
    """PartitionSpec for an array of `shape` whose dims have these logical names."""
    mesh_shape = dict(mesh.shape)
    used = set()
    parts = []
    for name, dim in zip(logical_axes, shape):
        axes = []
        for mesh_axis in dict(RULES).get(name, ()):
            size = math.prod(mesh_shape[a] for a in axes) * mesh_shape.get(mesh_axis, 1)
            if mesh_axis in mesh_shape and mesh_axis not in used and dim % size == 0:
                axes.append(mesh_axis)
        used.update(axes)
        parts.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    return P(*parts)


def current_mesh():
    """The mesh set with `jax.set_mesh(mesh)`, or None (a bare `with mesh:` does not count):
    activation constraints apply only under `jax.set_mesh`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(AXES) <= set(mesh.axis_names):
        return None
    return mesh


def constrain(x, logical_axes):
    """Pin an activation's layout by the rules; a no-op outside a mesh."""
    mesh = current_mesh()
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, spec(logical_axes, x.shape, mesh))


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(("data", "fsdp"), None))

