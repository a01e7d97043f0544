"""The README is tested like code: every `python -m experiments.…` command in it (and in each
experiment module's docstring) names only flags its module defines, and the README's commands
parse with the module's own flag definitions, so a renamed or removed flag fails here, not in a
user's job. The local commands run elsewhere in the suite: `make demo` is `experiments.demo`
(test_demo.py runs it at smoke scale, as typed, with its default workdir)."""
import ast
import glob
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")

# Prints {"flags": {name: is_bool}, "errors": [...]} for one module and the argvs given: the
# module is imported in its own process (several modules define the same global flag names).
_INSPECT = """
import importlib, json, sys
from absl import flags
module, argvs = sys.argv[1], json.loads(sys.argv[2])
mod = importlib.import_module("experiments." + module)
fv = getattr(mod, "FLAGS", flags.FLAGS)  # paper experiments: experiments.train's global flags
for name, value in getattr(mod, "DEFAULTS", {}).items():
    fv.set_default(name, value)
errors = []
for argv in argvs:
    fv.unparse_flags()
    try:
        fv(["prog", *argv])
    except flags.Error as e:
        errors.append(f"{' '.join(argv)}: {e}")
print(json.dumps({"flags": {n: isinstance(fv[n], flags.BooleanFlag) for n in fv},
                  "errors": errors}))
"""


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m experiments.X ...` command, continuation lines
    joined, shell variables of the form `B=value` substituted, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", text)
    variables = dict(re.findall(r"^(\w+)=(\S+)$", text, re.M))
    out = []
    for line in re.findall(r"python -m experiments\.[^\n`]*", text):
        for name, value in variables.items():
            line = line.replace("$" + name, value)
        words = [w.strip("[]") for w in shlex.split(line, comments=True)]  # [optional] flags
        out.append((words[2].split(".", 1)[1], [w for w in words[3:] if w not in ("", "...")]))
    return out


def flag_names(arguments: list[str]) -> list[str]:
    return [w.lstrip("-").split("=")[0] for w in arguments if w.startswith("--")]


def inspect(module: str, argvs: list[list[str]]) -> dict:
    run = subprocess.run([sys.executable, "-c", _INSPECT, module, json.dumps(argvs)], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def _readme_commands():
    with open(README, encoding="utf-8") as f:
        return commands(f.read())


def _documented_commands():
    out = {}
    for path in sorted(glob.glob(os.path.join(REPO, "experiments", "*.py"))):
        with open(path, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
        for module, arguments in commands(doc):
            out.setdefault(module, []).append(("docstring", arguments))
    for module, arguments in _readme_commands():
        out.setdefault(module, []).append(("README", arguments))
    return out


def test_the_readme_names_its_commands():
    modules = {m for m, _ in _readme_commands()}
    assert {"synthesize", "prepare", "baseline", "stitched", "demo"} <= modules


@pytest.mark.parametrize("module, uses", sorted(_documented_commands().items()))
def test_documented_commands_use_only_defined_flags(module, uses):
    readme = [arguments for where, arguments in uses if where == "README"]
    got = inspect(module, readme)
    for where, arguments in uses:
        for name in flag_names(arguments):
            known = name in got["flags"] or (name.startswith("no") and got["flags"].get(name[2:]))
            assert known, f"{where} of experiments.{module}: --{name} is not one of its flags"
    assert got["errors"] == []  # the README's commands parse as typed


def test_make_demo_runs_the_demo_module():
    run = subprocess.run(["make", "-n", "demo", "PY=python"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert "python -m experiments.demo" in run.stdout, run.stdout + run.stderr
