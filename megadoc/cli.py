"""Flags of experiment modules that keep their own `absl.flags.FlagValues`, so that several
such modules (which define flags of the same names: --workdir, --val, --seed) can be imported
into one process, as the tests do."""
import sys

from absl import app, flags


def parser(flag_values: flags.FlagValues):
    """An `app.run(..., flags_parser=)` that parses `flag_values` (answering --help itself, as
    absl only does for the global namespace) and marks the global namespace parsed too
    (libraries such as grain read absl flags and refuse unparsed ones)."""
    def parse(argv):
        if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
            print(sys.modules["__main__"].__doc__ or "")
            print(flag_values.get_help())
            sys.exit(0)
        try:
            rest = flag_values(argv)
        except flags.Error as e:
            sys.exit(f"{e}\nSee --help.")
        flags.FLAGS.mark_as_parsed()
        return rest
    return parse


def parse_named(items, flag: str) -> dict[str, str]:
    """{NAME: PATH} from repeated --flag=NAME=PATH values."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise app.UsageError(f"--{flag}={item!r}: expected NAME=PATH")
        out[name] = path
    return out
