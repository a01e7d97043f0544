"""Command-line flags generated from the config dataclasses: one helper, one convention.

The convention: a config field `name` is the flag `--name` (nested configs flatten: the field
`mix` of DataConfig is `--mix`); its help is the field's docstring, the string literal written
under it; its default is the field's, or None where the experiment fills it in (a preset, a
store's metadata). A flag that predates the convention stays as an alias of the generated one.

Every command keeps its own `absl.flags.FlagValues` (`command_flags`; so several, which define
flags of the same names, can share a process, as the tests do), parsed by `parser`, which
answers --help with the generated flags and exit 0; `build` turns them into the config. Every
command runs through `run`: absl's `app.run`, with the errors a user can fix (bad input, a
missing, unreadable or unwritable path, a full disk) reported as one line `error: ...` and exit
code 2 instead of a traceback; so are usage errors (`app.UsageError`: a missing or
contradictory flag), flags that do not parse, and a run that diverged (`FloatingPointError`:
its hyper-parameters are the user's to change). An exception carrying an `exit_code` (a
preempted run: 143) ends with that code; other exceptions keep their traceback (bugs).
"""
from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import sys
import textwrap
import types
import typing

from absl import app, flags

# FileNotFoundError, PermissionError, StorageError are OSErrors; UnicodeDecodeError a ValueError.
USER_ERRORS = (ValueError, OSError, FloatingPointError, app.UsageError)
EXIT_USER_ERROR = 2


def field_docs(cls) -> dict[str, str]:
    """{field: docstring} of a dataclass and its dataclass bases."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for stmt, after in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _base_type(hint):
    """`X | None` → X; anything else as it is."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def _is_named_paths(hint) -> bool:
    """tuple[tuple[str, str], ...]: (name, path) pairs, given as repeated NAME=PATH."""
    args = typing.get_args(hint)
    return typing.get_origin(hint) is tuple and bool(args) and typing.get_origin(args[0]) is tuple


def define_fields(cls, flag_values: flags.FlagValues = flags.FLAGS, *, only=None, skip=(),
                  defaults=None, filled=None, choices=None, aliases=None, module=None) -> None:
    """Define `--<field>` for the fields of dataclass `cls` (`only` these, none of `skip`), as
    flags of the calling module; a field that is itself a dataclass contributes its fields
    (flat: DataConfig's `mix` is `--mix`). `defaults` overrides a field's default; `filled`
    names who fills a field whose flag is left unset (its default becomes None); `choices`
    makes a str field an enum; `aliases` maps a field to an older flag name that keeps
    working."""
    defaults, filled = dict(defaults or {}), filled or {}
    choices, aliases = choices or {}, aliases or {}
    defaults.update(dict.fromkeys(filled))
    if module is None:
        module = sys._getframe(1).f_globals["__name__"]
        module = sys.argv[0] if module == "__main__" else module  # as absl names the main module
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for field in dataclasses.fields(cls):
        name = field.name
        if (only is not None and name not in only) or name in skip:
            continue
        if dataclasses.is_dataclass(hints[name]):  # nested: its fields, by their own names
            define_fields(hints[name], flag_values, skip=skip, defaults=defaults, filled=filled,
                          choices=choices, aliases=aliases, module=module)
            continue
        if name not in docs:
            raise ValueError(f"{cls.__module__}.{cls.__qualname__}.{name} has no docstring: "
                             f"write one under the field, it is the flag's --help")
        default = defaults.get(name, None if field.default is dataclasses.MISSING
                               else field.default)
        hint, doc = _base_type(hints[name]), docs[name]
        doc += f" (default: {filled[name]})" if name in filled else ""
        kw = {"flag_values": flag_values, "module_name": module}
        flag = flag_name(field)
        if name in choices:
            flags.DEFINE_enum(flag, default, list(choices[name]), doc, **kw)
        elif hint is bool:
            flags.DEFINE_bool(flag, default, doc, **kw)
        elif hint is int:
            flags.DEFINE_integer(flag, default, doc, **kw)
        elif hint is float:
            flags.DEFINE_float(flag, default, doc, **kw)
        elif hint is str:
            flags.DEFINE_string(flag, default, doc, **kw)
        elif _is_named_paths(hint):
            flags.DEFINE_multi_string(flag, [f"{k}={v}" for k, v in default or ()],
                                      f"{doc} (NAME=PATH, repeatable)", **kw)
        elif typing.get_origin(hint) is tuple:
            flags.DEFINE_list(flag, None if default is None else [str(x) for x in default],
                              f"{doc} (comma-separated)", **kw)
        else:
            raise TypeError(f"{cls.__qualname__}.{name}: no flag type for {hint}")
        for alias in {aliases.get(name), name} - {None, flag}:
            flags.DEFINE_alias(alias, flag, flag_values=flag_values, module_name=module)


def flag_name(field: dataclasses.Field) -> str:
    """A field's flag: its name, or `metadata={"flag": ...}` where the name means something else
    in another command (the name then stays as an alias)."""
    return field.metadata.get("flag", field.name)


def field_values(cls, flag_values: flags.FlagValues = flags.FLAGS) -> dict:
    """{field: value} for the fields of `cls` that are flags with a value (not None), typed as
    the field is."""
    hints, out = typing.get_type_hints(cls), {}
    for field in dataclasses.fields(cls):
        flag = flag_name(field)
        if flag not in flag_values or flag_values[flag].value is None:
            continue
        value, hint = flag_values[flag].value, _base_type(hints[field.name])
        if _is_named_paths(hint):
            value = tuple(parse_named(value, flag).items())
        elif typing.get_origin(hint) is tuple:
            value = parse_list(value, typing.get_args(hint)[0], flag)
        out[field.name] = value
    return out


def parse_list(items, item_type, flag: str) -> tuple:
    """The items of a comma-separated --flag as `item_type`s, or a UsageError naming the flag."""
    try:
        return tuple(item_type(x) for x in items)
    except ValueError as e:
        raise app.UsageError(f"--{flag}={','.join(items)}: expected comma-separated "
                             f"{item_type.__name__} values ({e})") from e


def build(cls, flag_values: flags.FlagValues, **given):
    """The `cls` the flags describe: `given` fields first, then the flags with a value, nested
    dataclass fields built the same way from their own fields' flags; a required field left
    unset is a usage error naming its flag."""
    hints, values = typing.get_type_hints(cls), field_values(cls, flag_values) | given
    for field in dataclasses.fields(cls):
        if field.name not in values and dataclasses.is_dataclass(hints[field.name]):
            values[field.name] = build(hints[field.name], flag_values)
    missing = [f"--{flag_name(f)}" for f in dataclasses.fields(cls) if f.name not in values
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise app.UsageError(f"missing required flags: {', '.join(missing)}")
    return cls(**values)


def replace(config, **flat):
    """`config` with fields replaced by their flag names, wherever they sit in its nested
    dataclasses (`replace(train_cfg, lr=1e-3, seed=1)`); an unknown name is an error."""
    changes, left = {}, dict(flat)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in left:
            changes[field.name] = left.pop(field.name)
        elif dataclasses.is_dataclass(value):
            inner = {k: left.pop(k) for k in list(left) if k in flat_names(type(value))}
            if inner:
                changes[field.name] = replace(value, **inner)
    if left:
        raise ValueError(f"{type(config).__name__} has no field {', '.join(sorted(left))}")
    return dataclasses.replace(config, **changes)


def flat_names(cls) -> set[str]:
    """Every field name of `cls`, nested dataclasses flattened."""
    hints = typing.get_type_hints(cls)
    return {n for f in dataclasses.fields(cls)
            for n in (flat_names(hints[f.name]) if dataclasses.is_dataclass(hints[f.name])
                      else {f.name})}


def parse_named(items, flag: str) -> dict[str, str]:
    """{NAME: PATH} from repeated --flag=NAME=PATH values; a NAME given twice is refused (one of
    the two would be dropped)."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--{flag}={item!r}: expected NAME=PATH")
        if name in out:
            raise app.UsageError(f"--{flag}={item}: the name {name!r} is already given to "
                                 f"{out[name]}; give each set its own name")
        out[name] = path
    return out


def parser(flag_values: flags.FlagValues):
    """An `app.run(..., flags_parser=)` that parses `flag_values` (answering --help itself, as
    absl only does for the global namespace) and marks the global namespace parsed too
    (libraries such as grain read absl flags and refuse unparsed ones)."""
    def parse(argv):
        if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
            print(sys.modules["__main__"].__doc__ or "")
            print(flag_values.main_module_help() if flag_values is flags.FLAGS
                  else flag_values.get_help())
            sys.exit(0)
        try:
            rest = flag_values(argv)
        except flags.Error as e:
            _exit_user_error(f"{e} (see --help)")
        flags.FLAGS.mark_as_parsed()
        return rest
    return parse


def _exit_user_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def plain_errors(main):
    """`main` with no positional arguments (no experiment takes any) and user errors as one line."""
    @functools.wraps(main)
    def wrapped(argv):
        try:
            if len(argv) > 1:
                raise app.UsageError(f"unexpected arguments: {argv[1:]}")
            return main(argv)
        except USER_ERRORS as e:
            _exit_user_error(str(e))
        except Exception as e:  # a typed stop that names its exit code (a preempted run: 143)
            if not isinstance(getattr(e, "exit_code", None), int):
                raise
            print(f"stopped: {e}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
    return wrapped


def run(main, flags_parser=None) -> None:
    """`app.run(main)`, parsing the global flags (or, with `flags_parser`, the module's own
    namespace); a flag that does not parse is one line and exit 2 either way."""
    app.run(plain_errors(main), flags_parser=flags_parser or parser(flags.FLAGS))


def run_flags(job, flag_values) -> None:
    """`run` for a module whose whole job is `job()` reading its own flag namespace."""
    def main(argv):
        del argv
        job()
    run(main, flags_parser=parser(flag_values))


def command_flags(cls, **define) -> flags.FlagValues:
    """A command's own flag namespace: the fields of its config `cls` (`define_fields`)."""
    flag_values = flags.FlagValues()
    module = sys._getframe(1).f_globals["__name__"]
    define_fields(cls, flag_values, module=sys.argv[0] if module == "__main__" else module,
                  **define)
    return flag_values
