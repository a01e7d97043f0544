"""How every experiment module runs: absl's `app.run`, with the errors a user can fix (bad input,
a missing, unreadable or unwritable path, a full disk) reported as one line `error: ...` and
exit code 2 instead of a traceback; other exceptions keep theirs (they are bugs)."""
from __future__ import annotations

import functools
import sys

from absl import app

USER_ERRORS = (ValueError, OSError)  # FileNotFoundError, PermissionError, StorageError: OSErrors
EXIT_USER_ERROR = 2


def plain_errors(main):
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
    return wrapped


def run(main, flags_parser=None) -> None:
    """`app.run(main)` (with `flags_parser` when the module keeps its own flag namespace)."""
    if flags_parser is None:
        app.run(plain_errors(main))
    else:
        app.run(plain_errors(main), flags_parser=flags_parser)
