"""orbax checkpoints on gs:// (the emulator): etils.epath -> gcsfs for files, tensorstore for arrays."""
import threading

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from gcs_server import FaultProxy, GcsServer
from megadoc import fs, gcs


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("gcs_server").fresh_path()


def _state(step: int, mesh):
    w = jax.device_put(jnp.arange(32.0).reshape(8, 4) * step, NamedSharding(mesh, P("data")))
    return {"params": {"w": w, "b": jnp.full((3,), step, jnp.int32)}, "step": step}


def test_manager_saves_keeps_and_restores_sharded_state(root):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    ckpt = fs.join(root, "ckpt")
    options = ocp.CheckpointManagerOptions(max_to_keep=2)
    with ocp.CheckpointManager(ckpt, options=options) as mgr:
        for step in (1, 2, 3):
            mgr.save(step, args=ocp.args.StandardSave(_state(step, mesh)))
        mgr.wait_until_finished()
    assert fs.listdir(ckpt) == ["2", "3"]

    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, mesh))
    with ocp.CheckpointManager(ckpt) as mgr:  # a fresh process would do exactly this
        assert mgr.all_steps() == [2, 3]
        restored = mgr.restore(mgr.latest_step(), args=ocp.args.StandardRestore(target))
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(32.0).reshape(8, 4) * 3)
    assert restored["params"]["w"].sharding == NamedSharding(mesh, P("data"))
    np.testing.assert_array_equal(restored["params"]["b"], [3, 3, 3])
    assert restored["step"] == 3


def test_unfinished_gcs_checkpoint_is_never_listed(gcs_server):
    """On gs:// orbax cannot rename a directory: a step counts only once its
    commit_success.txt exists. A save torn before that (here: the marker deleted) is ignored,
    removed by `cleanup_tmp_directories=True`, and saved again by the resumed job."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    ckpt = fs.join(gcs_server.fresh_path(), "ckpt")
    with ocp.CheckpointManager(ckpt) as mgr:
        for step in (1, 2):
            mgr.save(step, args=ocp.args.StandardSave(_state(step, mesh)))
        mgr.wait_until_finished()
    assert fs.exists(fs.join(ckpt, "2", "commit_success.txt"))
    fs.remove(fs.join(ckpt, "2", "commit_success.txt"))
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.latest_step() == 1
    cleanup = ocp.CheckpointManagerOptions(cleanup_tmp_directories=True)
    with ocp.CheckpointManager(ckpt, options=cleanup) as mgr:
        assert fs.listdir(ckpt) == ["1"]  # the torn step's objects are gone
        mgr.save(2, args=ocp.args.StandardSave(_state(5, mesh)))  # the resumed job saves again
        mgr.wait_until_finished()
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.all_steps() == [1, 2]
        restored = mgr.restore(2, args=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, mesh))))
    assert restored["step"] == 5


def test_save_survives_transient_failures(gcs_server):
    """gcsfs (orbax's files) and tensorstore (its arrays) retry on their own; a 503 and a reset
    in the middle of a save cost a retry, not the checkpoint."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    ckpt = fs.join(gcs_server.fresh_path(), "ckpt")
    with FaultProxy(gcs_server) as proxy:
        proxy.inject(*[None] * 5, 503, *[None] * 20, "reset")
        with ocp.CheckpointManager(ckpt) as mgr:
            mgr.save(7, args=ocp.args.StandardSave(_state(7, mesh)))
            mgr.wait_until_finished()
        assert proxy.pending() == 0
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.all_steps() == [7]
        restored = mgr.restore(7, args=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, mesh))))
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(32.0).reshape(8, 4) * 7)


def test_save_bridges_a_server_outage(tmp_path):
    """The server is down when a save starts and back a second later (same port, objects kept):
    the save completes and restores; the previous checkpoint is untouched."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with GcsServer(data_dir=str(tmp_path / "disk")) as server:
        ckpt = fs.join(server.fresh_path(), "ckpt")
        with ocp.CheckpointManager(ckpt) as mgr:
            mgr.save(1, args=ocp.args.StandardSave(_state(1, mesh)))
            mgr.wait_until_finished()
            server.stop()
            restart = threading.Timer(1.0, server.start)
            restart.start()
            try:
                mgr.save(2, args=ocp.args.StandardSave(_state(2, mesh)))
                mgr.wait_until_finished()
            finally:
                restart.join()
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, mesh))
        with ocp.CheckpointManager(ckpt) as mgr:
            assert mgr.all_steps() == [1, 2]
            for step in (1, 2):
                restored = mgr.restore(step, args=ocp.args.StandardRestore(target))
                np.testing.assert_array_equal(restored["params"]["w"],
                                              np.arange(32.0).reshape(8, 4) * step)


def test_a_new_manager_sees_steps_written_by_another_process(gcs_server):
    """gcsfs caches listings forever unless told otherwise (megadoc.gcs sets the default): an
    evaluator must see the trainer's new steps. The "other process" here writes through the
    google-cloud-storage client, which gcsfs's cache knows nothing about."""
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    root = gcs_server.fresh_path()
    ckpt, elsewhere = fs.join(root, "ckpt"), fs.join(root, "elsewhere")
    for directory, step in ((ckpt, 1), (elsewhere, 2)):
        with ocp.CheckpointManager(directory) as mgr:
            mgr.save(step, args=ocp.args.StandardSave(_state(step, mesh)))
            mgr.wait_until_finished()
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.all_steps() == [1]
    for src in gcs.list_recursive(fs.join(elsewhere, "2")):
        fs.write_bytes(ckpt + src[len(elsewhere):], fs.read_bytes(src))
    with ocp.CheckpointManager(ckpt) as mgr:
        assert mgr.all_steps() == [1, 2]
        restored = mgr.restore(2, args=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, _state(0, mesh))))
    np.testing.assert_array_equal(restored["params"]["w"], np.arange(32.0).reshape(8, 4) * 2)
