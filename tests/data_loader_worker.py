"""One process of the two-process loader test: prints the rows of each batch it holds as JSON.

    python tests/data_loader_worker.py PROCESS_ID PORT REAL_STORE SYNTHETIC_STORE START_STEP STEPS
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megadoc.data import loader, store  # noqa: E402
from megadoc.data.schedule import MixSchedule  # noqa: E402
from megadoc.models import sharding  # noqa: E402

BATCH, MIX, EPOCHS, SEED = 16, 0.25, 2, 11


def main(process_id, port, real_path, synthetic_path, start_step, steps):
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(process_id),
                               initialization_timeout=60)
    real, synthetic = store.open(real_path), store.open(synthetic_path)
    schedule = MixSchedule(len(real), len(synthetic), BATCH, MIX, EPOCHS, SEED)
    batches = loader.BatchLoader(schedule, real, synthetic, sharding.batch_sharding(sharding.make_mesh()),
                                start_step=int(start_step))
    out = {}
    for _ in range(int(steps)):
        step, batch = next(batches)
        rows = {}
        for shard in batch["tokens"].addressable_shards:
            start = shard.index[0].start or 0
            for i, row in enumerate(np.asarray(shard.data)):
                rows[start + i] = row[0].item()
        out[step] = rows
    print("ROWS " + json.dumps(out), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
