"""Flags generated from the config dataclasses (megadoc.cli)."""
import dataclasses
import importlib
import inspect
import pathlib

import pytest
from absl import app, flags

from megadoc import cli
from megadoc.train import config


@dataclasses.dataclass(frozen=True)
class Example:
    path: str
    """where it goes"""
    count: int = 3
    """how many"""
    ratio: float | None = None
    """a fraction, or none"""
    shape: tuple[int, int] = (1, -1)
    """two sizes"""
    sets: tuple[tuple[str, str], ...] = ()
    """named paths"""
    on: bool = True
    """a switch"""


def parsed(*argv, **define):
    f = flags.FlagValues()
    cli.define_fields(Example, f, **define)
    f(["prog", *argv])
    return f


def test_each_field_is_a_flag_of_its_name_with_its_docstring_as_help():
    f = parsed()
    help_text = f.get_help()
    for name, doc in cli.field_docs(Example).items():
        assert f[name].help.startswith(doc) and f"--{name}" in help_text.replace("[no]", "")
    assert cli.field_values(Example, f) == {"count": 3, "shape": (1, -1), "sets": (), "on": True}


def test_values_come_back_typed_as_the_fields():
    f = parsed("--path=p", "--count=5", "--ratio=0.5", "--shape=2,4", "--sets=a=A", "--sets=b=B",
               "--noon")
    assert Example(**cli.field_values(Example, f)) == Example(
        "p", 5, 0.5, (2, 4), (("a", "A"), ("b", "B")), False)


def test_aliases_filled_defaults_and_choices():
    f = parsed("--n=7", aliases={"count": "n"}, filled={"ratio": "the preset's"},
               choices={"path": ("x", "y")}, defaults={"path": "x"})
    assert f.count == 7 and f.path == "x" and f.ratio is None
    assert "(default: the preset's)" in f["ratio"].help
    with pytest.raises(flags.IllegalFlagValueError):
        f(["prog", "--path=z"])


def test_bad_values_and_undocumented_fields_are_refused():
    f = parsed("--sets=nameless")
    with pytest.raises(app.UsageError, match="--sets='nameless': expected NAME=PATH"):
        cli.field_values(Example, f)

    @dataclasses.dataclass(frozen=True)
    class Bare:
        x: int = 0

    with pytest.raises(ValueError, match="Bare.x has no docstring"):
        cli.define_fields(Bare, flags.FlagValues())


def test_every_config_field_has_a_docstring():
    for cls in (config.TrainConfig, config.DataConfig, config.OptimizerConfig):
        assert set(cli.field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}


COMMANDS = sorted(p.stem for p in pathlib.Path(__file__).parent.parent.glob("experiments/*.py")
                  if p.stem != "__init__")


@pytest.mark.parametrize("module", COMMANDS)
def test_every_command_answers_help_with_its_generated_flags_and_exit_0(module, capsys):
    mod = importlib.import_module(f"experiments.{module}")
    source = inspect.getsource(mod)
    assert "cli.run_flags(" in source or "cli.parser(FLAGS)" in source or \
        "train.run_experiment(" in source  # each parses its own FLAGS through cli.parser
    with pytest.raises(SystemExit) as exit_:
        cli.parser(mod.FLAGS)(["prog", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in mod.FLAGS:
        assert f"--{name}" in out.replace("--[no]", "--"), name


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Example
    """nested: its fields are flags of their own names"""
    name: str = "o"
    """a name"""


def test_nested_configs_are_built_from_flat_flags_and_replaced_by_flat_names():
    f = flags.FlagValues()
    cli.define_fields(Outer, f)
    f(["prog", "--path=p", "--count=5", "--name=n"])
    outer = cli.build(Outer, f)
    assert outer == Outer(Example("p", 5), "n")
    assert cli.replace(outer, count=7, name="m") == Outer(Example("p", 7), "m")
    with pytest.raises(ValueError, match="Outer has no field nope"):
        cli.replace(outer, nope=1)
    f.unparse_flags()
    f(["prog", "--count=5"])
    with pytest.raises(app.UsageError, match="missing required flags: --path"):
        cli.build(Outer, f)
