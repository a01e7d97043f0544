import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_fixtures import labelled_store
from megadoc.data import loader
from megadoc.data.schedule import SYNTHETIC, MixSchedule
from megadoc.models import sharding

BATCH, MIX, EPOCHS, SEED = 16, 0.25, 2, 11  # as in data_loader_worker.py


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return labelled_store(str(d / "real"), 30, label=1), labelled_store(str(d / "syn"), 23, label=2)


def make_loader(stores, mesh, start_step=0):
    real, syn = stores
    schedule = MixSchedule(len(real), len(syn), BATCH, MIX, EPOCHS, SEED)
    return loader.BatchLoader(schedule, real, syn, sharding.batch_sharding(mesh), start_step=start_step)


def expected_labels(schedule, step):
    streams, windows = schedule.batch_indices(step)
    return np.where(streams == SYNTHETIC, 2000, 1000) + windows


def test_batches_follow_the_schedule_on_the_mesh(stores):
    mesh = sharding.make_mesh()
    batches = make_loader(stores, mesh)
    seen = 0
    for step, batch in batches:
        tokens = batch["tokens"]
        assert tokens.shape == (BATCH, 9) and tokens.dtype == np.int32
        assert tokens.sharding == sharding.batch_sharding(mesh)
        got = np.asarray(tokens)
        np.testing.assert_array_equal(got[:, 0], expected_labels(batches.schedule, step))
        assert (got == got[:, :1]).all() and (np.asarray(batch["segment_ids"]) == 1).all()
        assert ((got[:, 0] >= 2000).sum()) == round(MIX * BATCH)
        seen += 1
    assert seen == batches.schedule.num_steps == 5  # ceil(2 * 30 / 12)


def test_same_batches_on_4_devices_and_after_restart(stores):
    full = {s: np.asarray(b["tokens"]) for s, b in make_loader(stores, sharding.make_mesh())}
    four = sharding.make_mesh(data=2, fsdp=2, devices=jax.devices()[:4])
    for step, batch in make_loader(stores, four, start_step=3):
        np.testing.assert_array_equal(np.asarray(batch["tokens"]), full[step])
    with pytest.raises(ValueError, match="start_step"):
        make_loader(stores, sharding.make_mesh(), start_step=len(full) + 1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_assemble_the_same_global_batch(stores):
    real, syn = stores
    port, start, steps = free_port(), 2, 3
    here = os.path.dirname(os.path.abspath(__file__))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [subprocess.Popen([sys.executable, os.path.join(here, "data_loader_worker.py"), str(i), str(port),
                               real.path, syn.path, str(start), str(steps)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    rows = {}
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        line = next(x for x in out.splitlines() if x.startswith("ROWS "))
        for step, r in json.loads(line[5:]).items():
            for row, label in r.items():
                assert rows.setdefault((int(step), int(row)), label) == label
    schedule = MixSchedule(len(real), len(syn), BATCH, MIX, EPOCHS, SEED)
    for step in range(start, start + steps):
        got = [rows[(step, r)] for r in range(BATCH)]  # every row came from exactly one place
        assert got == expected_labels(schedule, step).tolist()


def test_batch_that_does_not_split_over_the_mesh_is_refused(stores):
    real, syn = stores
    schedule = MixSchedule(len(real), len(syn), 12, MIX, EPOCHS, SEED)
    with pytest.raises(ValueError, match="does not split over the mesh's 8 batch shards"):
        loader.BatchLoader(schedule, real, syn, sharding.batch_sharding(sharding.make_mesh()))
