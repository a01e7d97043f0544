"""Runs the distillation of test_analysis_distill in its own process (to be killed and rerun).

    python tests/distill_worker.py WORKDIR REAL_STORE VAL_STORE
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_analysis_distill import TEACHER, config, teacher_params  # noqa: E402

from megadoc.analysis import distill  # noqa: E402

if __name__ == "__main__":
    workdir, real, val = sys.argv[1:]
    summary = distill.distill(config(workdir, real, val), TEACHER, teacher_params())
    print("STATUS", summary["status"], flush=True)
