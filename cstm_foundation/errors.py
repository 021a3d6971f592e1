"""Faults a user can fix, reported as one line; and the command-line wrapper that reports them.

A `UserError`'s message is the whole report: the file, key or value at fault and what to do.
Every command catches it at the top (`run_main`), prints `error: <message>` on stderr and exits
with status 1; set `CSTM_DEBUG=1` to get the traceback instead. Anything else is a bug and keeps
its traceback. (Defined here, in the layer that imports nothing of the package, so that data
preparation and training raise the same kind.)
"""
import os
import sys

DEBUG_VARIABLE = 'CSTM_DEBUG'


def debugging() -> bool:
  """Whether CSTM_DEBUG asks for tracebacks (and library noise) instead of one-line reports."""
  return os.environ.get(DEBUG_VARIABLE, '') not in ('', '0')


class UserError(Exception):
  """A fault in the user's input, files or settings; the message says what and what to do."""


def run_main(main, *args, at_safe_points: bool = False) -> int:
  """`main(*args)` with SIGTERM and SIGINT as stop requests (`stopping`: honoured at the safe
  points of a command that has them, else at once); 1 after printing a `UserError` as one line
  on stderr; a `stopping.Stopped`'s line and its status after a stop."""
  from cstm_foundation import stopping
  with stopping.handled(at_safe_points=at_safe_points):
    try:
      return main(*args)
    except stopping.Stopped as stop:
      print(stop, file=sys.stderr, flush=True)
      if stop.abandons_threads:
        stopping.exit_now(stop.exit_status)
      status = stop.exit_status
    except UserError as error:
      if debugging():
        raise
      report(error)
      return 1
  # What the stop left half-used (a loader's worker processes and queues, held by the frames of
  # its traceback) is closed now, while multiprocessing's queues are open: at the interpreter's
  # exit their finalizers would run after the queues' and print tracebacks.
  import gc
  gc.collect()
  return status


def report(error: BaseException) -> None:
  """Prints `error` on stderr as a command's last words: one line for a `UserError`, its
  traceback for anything else (and for both under CSTM_DEBUG=1)."""
  if isinstance(error, UserError) and not debugging():
    print(f'error: {error}', file=sys.stderr, flush=True)
  else:
    import traceback
    traceback.print_exception(error, file=sys.stderr)


def first_line(error: BaseException, limit: int = 300) -> str:
  """The first line of `error`'s message (its type's name when empty), at most `limit` chars."""
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


class ConfigError(UserError, ValueError):
  """A setting that cannot work (an unknown key, a value out of range, a mismatch)."""


class MissingFile(UserError, FileNotFoundError):
  """A file or folder the user named, or that a step needs, is not there."""


class BadFile(UserError, ValueError):
  """A file that exists but is not what it should be (format, contents); names the file."""
