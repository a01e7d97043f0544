"""The layering ARCHITECTURE.md describes, checked on the source: imports point one way, and
compiled steps and checkpoint managers live in one place."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Only these may call jax.jit or make an orbax CheckpointManager: the training package, the
# two samplers (one model's KV-cache sampler; an ensemble's, for unconditional documents) and
# the generator's own scorer of what it wrote (fidelity).
COMPILING = ("megadoc/train/", "megadoc/synth/sampler.py", "megadoc/synth/unconditional.py",
             "megadoc/synth/fidelity.py")


def sources(folder):
    return sorted((ROOT / folder).rglob("*.py"))


def imported_modules(path):
    """Every module `path` imports, as dotted names (`from a import b` gives a and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def rel(path):
    return path.relative_to(ROOT).as_posix()


def test_data_imports_nothing_from_models_train_synth_or_analysis():
    forbidden = tuple(f"megadoc.{p}" for p in ("models", "train", "synth", "analysis"))
    found = {rel(p): sorted(m for m in imported_modules(p) if m.startswith(forbidden))
             for p in sources("megadoc/data")}
    assert not {k: v for k, v in found.items() if v}


# ARCHITECTURE.md's table: the megadoc parts each package may import.
ALLOWED = {
    "cli.py": set(),
    "fs.py": {"gcs"},
    "gguf_file.py": {"fs", "gcs"},
    "data": {"fs", "gcs", "gguf_file", "data"},
    "models": {"fs", "gcs", "gguf_file", "models"},
    "train": {"fs", "gcs", "data", "models", "train"},
    "synth": {"fs", "gcs", "gguf_file", "data", "models", "synth"},
}


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(part):
    paths = [ROOT / "megadoc" / part] if part.endswith(".py") else sources(f"megadoc/{part}")
    found = {}
    for path in paths:
        used = {m.split(".")[1].removesuffix(".py") for m in imported_modules(path)
                if m.startswith("megadoc.")}
        if used - ALLOWED[part]:
            found[rel(path)] = sorted(used - ALLOWED[part])
    assert not found


def test_sharding_imports_no_other_model_module():
    found = {m for m in imported_modules(ROOT / "megadoc/models/sharding.py")
             if m.startswith("megadoc.")}
    assert not found


def test_experiments_take_library_code_only_from_megadoc():
    found = {}
    for path in sources("experiments"):
        local = sorted(m for m in imported_modules(path) if m.startswith("experiments")
                       and m not in ("experiments", "experiments.train"))
        if local:
            found[rel(path)] = local
    assert not found


class _Compiles(ast.NodeVisitor):
    """Names of jit / CheckpointManager uses in a module."""

    def __init__(self):
        self.uses = []

    def visit_Attribute(self, node):
        if node.attr in ("jit", "CheckpointManager"):
            self.uses.append(f"line {node.lineno}: .{node.attr}")
        if node.attr == "manager" and isinstance(node.value, ast.Name) and \
                node.value.id == "checkpoint":
            self.uses.append(f"line {node.lineno}: checkpoint.manager")
        self.generic_visit(node)

    def visit_ImportFrom(self, node):
        for alias in node.names:
            if alias.name in ("jit", "CheckpointManager"):
                self.uses.append(f"line {node.lineno}: import {alias.name}")


def test_no_jit_or_checkpoint_manager_outside_train_and_the_samplers():
    found = {}
    for path in sources("megadoc"):
        if rel(path).startswith(COMPILING):
            continue
        visitor = _Compiles()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        if visitor.uses:
            found[rel(path)] = visitor.uses
    assert not found


@pytest.mark.parametrize("source, expected", [
    ("import jax\nf = jax.jit(g)\n", ["line 2: .jit"]),
    ("from jax import jit\n", ["line 1: import jit"]),
    ("from megadoc.train import checkpoint\nm = checkpoint.manager(w)\n",
     ["line 2: checkpoint.manager"]),
])
def test_the_compile_check_sees_each_form(source, expected):
    visitor = _Compiles()
    visitor.visit(ast.parse(source))
    assert visitor.uses == expected
