"""Error types the command-line scripts turn into one clear line and a non-zero exit."""
from __future__ import annotations

import functools
import sys
from typing import Callable


class CellEMNetError(Exception):
    """Base class: an expected failure whose message is shown to the user as is."""


class InputError(CellEMNetError):
    """A file or folder that cannot be read or has the wrong content; the message names it."""


class ConfigError(CellEMNetError):
    """A config file or key=value override that is wrong; the message names the file or key."""


def cli_main(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a script's main(): expected errors become `error: <message>` on stderr and exit code 2.

    Tracebacks are kept for real bugs (anything that is not a CellEMNetError).
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            code = main(*args, **kwargs)
        except CellEMNetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return int(code or 0)

    return wrapper
