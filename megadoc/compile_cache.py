"""A persistent XLA compilation cache under a job's workdir, so runs in one job that share
shapes (the demo's students, the knowledge driver's CPT runs and evaluations) compile each
function once, and a rerun after preemption compiles nothing again."""
from megadoc import fs


def use_workdir_cache(workdir: str) -> None:
    """Cache compiled functions in <workdir>/jax_cache; local workdirs only (a gs:// workdir
    keeps the default, per-process cache)."""
    import jax  # here, not at import: an entry point sets XLA flags before jax loads

    if fs.is_gcs(workdir):
        return
    jax.config.update("jax_compilation_cache_dir",
                      fs.storage_path(fs.join(workdir, "jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
