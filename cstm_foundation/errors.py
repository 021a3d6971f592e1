"""Faults a user can fix, each reported as one line.

A `UserError`'s message is the whole report: the file, key or value at fault and what to do.
Every command catches it at the top (`commands.run_main`), prints `error: <message>` on stderr
and exits with status 1; set `CSTM_DEBUG=1` to get the traceback instead. Anything else is a bug
and keeps its traceback. The foundation's lowest module: it imports nothing of the package, so
that data preparation and training raise the same kind, and `logs`, `stopping` and `commands`
build on it in that order.
"""
import os

DEBUG_VARIABLE = 'CSTM_DEBUG'


def debugging() -> bool:
  """Whether CSTM_DEBUG asks for tracebacks (and library noise) instead of one-line reports."""
  return os.environ.get(DEBUG_VARIABLE, '') not in ('', '0')


class UserError(Exception):
  """A fault in the user's input, files or settings; the message says what and what to do."""


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of `error`'s message (its type's name when empty), at most `limit` chars."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


class ConfigError(UserError, ValueError):
  """A setting that cannot work (an unknown key, a value out of range, a mismatch)."""


class MissingFile(UserError, FileNotFoundError):
  """A file or folder the user named, or that a step needs, is not there."""


class BadFile(UserError, ValueError):
  """A file that exists but is not what it should be (format, contents); names the file."""
