"""One process of the multi-process ensemble/benchmark test: prints its numbers as JSON.

    python tests/analysis_worker.py PROCESS_ID NUM_PROCESSES PORT VAL_STORE
"""
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_analysis_multihost import analysis_numbers  # noqa: E402


def main(process_id, num_processes, port, val_store):
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=int(num_processes),
                               process_id=int(process_id), initialization_timeout=60)
    print("NUMBERS " + json.dumps(analysis_numbers(val_store)), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
