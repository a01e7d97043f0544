"""`make bench`: run every benchmark in one process and write BENCH.md.

Each bench module exposes `run() -> str` returning a Markdown section with its own numbers;
ratios are measured within one run, never against numbers from another day.
"""
import datetime
import importlib
import os
import platform
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

SECTIONS = ["bench.loader", "bench.train_step", "bench.sampler", "bench.gpu"]


def _cpu_line() -> str:
    """The CPU the numbers come from: model name, bf16 dot units, and the dot form XLA:CPU runs
    bf16 values in (`megadoc.models.matmul.cpu_dot_choice`) with its reason."""
    from megadoc.models import matmul

    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith(("model name", "Model"))), model)
    except OSError:
        pass
    flags = ", ".join(matmul.cpu_bf16_flags()) or "none"
    form, why = matmul.cpu_dot_choice()
    return (f"CPU: {model}; bf16 dot units ({'/'.join(matmul.BF16_CPU_FLAGS)} flags): {flags}. "
            f"XLA:CPU runs bf16 dots as {form}: {why}.")


def main() -> None:
    load_before = os.getloadavg()[0]
    only = sys.argv[1:] or SECTIONS
    parts = [
        "# BENCH",
        "",
        f"Produced by `make bench` (`{' '.join(['python -m bench.run', *sys.argv[1:]])}`) on "
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"python {platform.python_version()}.",
        "",
        _cpu_line(),
        "",
    ]
    for name in only:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            print(f"[bench] {name}: not present, skipped", flush=True)
            continue
        print(f"[bench] {name} ...", flush=True)
        section = module.run()
        if section is None:
            print(f"[bench] {name}: does not apply on this machine, skipped", flush=True)
            continue
        print(section, flush=True)
        parts += [section, ""]
    parts[6:6] = [f"Load average when it started: {load_before:.2f} (1 min) on {os.cpu_count()} "
                  "cores (it decays over minutes, so it also counts work that ended just before); "
                  "a high value means other work may have shared the machine, lowering the "
                  "absolute numbers more than the interleaved ratios.", ""]
    with open("BENCH.md", "w") as f:
        f.write("\n".join(parts))
    print("[bench] wrote BENCH.md")


if __name__ == "__main__":
    main()
