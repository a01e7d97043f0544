"""The layering ARCHITECTURE.md describes, checked on the source: imports point one way, and
compiled steps and checkpoint managers live in one place."""
import ast
import collections
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Only these may call jax.jit or make an orbax CheckpointManager: the training package, the
# sampler (one model or an ensemble of members, for every synthesis method) and the generator's
# own scorer of what it wrote (fidelity).
COMPILING = ("megadoc/train/", "megadoc/synth/sampler.py", "megadoc/synth/fidelity.py")


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
    "compiled.py": set(),
    "fs.py": {"gcs"},
    "gguf_file.py": {"fs", "gcs"},
    "data": {"fs", "gcs", "gguf_file", "data"},
    "models": {"fs", "gcs", "gguf_file", "models"},
    "train": {"fs", "gcs", "compiled", "data", "models", "train"},
    "synth": {"fs", "gcs", "gguf_file", "compiled", "data", "models", "train", "synth"},
    "analysis": {"fs", "gcs", "gguf_file", "compile_cache", "data", "models", "train", "synth",
                 "analysis"},
    "pipelines": {"fs", "gcs", "gguf_file", "cli", "compile_cache", "data", "models", "train",
                  "synth", "analysis", "pipelines"},
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


def test_the_library_starts_no_process():
    """Training runs and synthesis jobs start in process (megadoc.pipelines), never as a
    subprocess of a command whose output is then read back (data.prepare's tokenizer workers
    are a multiprocessing pool of functions, not commands)."""
    found = {rel(p): sorted(m for m in imported_modules(p) if m.split(".")[0] == "subprocess")
             for p in sources("megadoc")}
    found.update({rel(p): ["sys.executable"] for p in sources("megadoc")
                  if "sys.executable" in p.read_text()})
    assert not {k: v for k, v in found.items() if v}


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


def test_every_document_the_code_cites_is_in_the_repository():
    cited = {}
    for path in [*sources("megadoc"), *sources("experiments"), *ROOT.glob("*.md")]:
        for name in re.findall(r"\b[A-Z][A-Z_]+\.md\b", path.read_text()):
            if not (ROOT / name).exists():
                cited.setdefault(rel(path), []).append(name)
    assert not cited


def _calls(folder, names):
    """{file: [line numbers]} of calls to any of `names` (as `x.name(...)` or `name(...)`)."""
    found = {}
    for path in sources(folder):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in names:
                    found.setdefault(rel(path), []).append(node.lineno)
    return found


def test_only_host_rows_builds_global_arrays_from_host_data():
    builders = {"make_array_from_callback", "make_array_from_process_local_data",
                "make_array_from_single_device_arrays"}
    found = set(_calls("megadoc", builders))
    # host_rows for batches; hf places the params it reads, shard by shard
    assert found <= {"megadoc/data/host_rows.py", "megadoc/models/hf.py"}


def test_only_the_loop_makes_a_train_step():
    # train.plan lowers the same step from abstract shapes and compiles it for a slice; it
    # never runs it
    assert set(_calls("megadoc", {"make_train_step"})) == {"megadoc/train/loop.py",
                                                            "megadoc/train/plan.py"}


def test_every_test_architecture_md_names_exists():
    """Each shared mechanism and design note names a test that checks it, and it exists."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    named = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    missing = [f"{file}::{name}" for file, name in named
               if not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M)]
    assert named and not missing
    for section in ("## The few shared mechanisms", "## Design notes"):
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        bullets = ["- " + b for b in body.split("\n- ")[1:]]
        assert bullets and all("::test_" in b for b in bullets), section
    tables = re.findall(r"`(test_\w+\.py)`", text)
    assert all((ROOT / "tests" / t).exists() for t in tables)


def _significant_lines(path):
    """(line number, text) of the lines that carry code: comments, blank lines, imports and lone
    closing brackets dropped, whitespace runs collapsed."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = re.sub(r"\s+", " ", line.split("  #", 1)[0].strip())
        if text and not text.startswith(("#", "import ", "from ")) and text.strip(")]}:,"):
            out.append((number, text))
    return out


def near_copies(paths, size=6):
    """Runs of `size` significant lines that occur more than once: [[file:line, ...], ...]."""
    seen = {}
    for path in paths:
        lines = _significant_lines(path)
        for k in range(len(lines) - size + 1):
            key = "\n".join(text for _, text in lines[k:k + size])
            name = rel(path) if path.is_relative_to(ROOT) else str(path)
            seen.setdefault(key, []).append(f"{name}:{lines[k][0]}")
    return [where for where in seen.values() if len(where) > 1]


def test_no_six_line_near_copy_inside_megadoc(tmp_path):
    assert not near_copies(sources("megadoc"))
    body = "".join(f"    total = total * {i} + step  # {i}\n" for i in range(6))
    (tmp_path / "a.py").write_text(f"def f(total, step):\n{body}")
    (tmp_path / "b.py").write_text(f"def g(total,  step):\n\n{body.replace('  #', '   #')}")
    copies = near_copies([tmp_path / "a.py", tmp_path / "b.py"])
    assert len(copies) == 1 and len(copies[0]) == 2
