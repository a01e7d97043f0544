"""Tests run on 8 simulated CPU devices, set before jax is first imported."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from gcs_server import gcs_server  # noqa: E402,F401  (the session's GCS emulator, on first use)
