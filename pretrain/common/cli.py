"""Command-line conventions shared by every entry point: usage errors and user mistakes as one line.

A tool builds its parser with :class:`ArgumentParser` and wraps its work in :func:`one_line_errors`:
a mistake the user can fix (the exceptions the library raises for bad paths, keys, files) prints
``prog: error: <message>`` on stderr and exits with status 2, without a traceback.
"""
import argparse
import contextlib
import sys

__all__ = ["ArgumentParser", "UserError", "one_line_errors", "fail"]

USAGE_STATUS = 2


class UserError(Exception):
    """A mistake the user can fix; its message is one line naming the file, key or value."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (``prog: error: ... (see --help)``) and exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        fail(self.prog, f"{message} (see --help)")


def fail(prog, message, status=USAGE_STATUS):
    """Print ``prog: error: message`` (first line only) and exit."""
    text = " ".join(str(message).split()) or "failed"
    print(f"{prog}: error: {text}", file=sys.stderr)
    raise SystemExit(status)


@contextlib.contextmanager
def one_line_errors(prog, *errors, status=USAGE_STATUS):
    """Turn the listed exception types (and :class:`UserError`) into one line on stderr and ``SystemExit``."""
    try:
        yield
    except (UserError, *errors) as e:
        fail(prog, str(e), status)
