"""The top of every command: stop requests, one-line reports of user errors, the exit status.

The foundation's imports run one way: `errors` <- `logs` <- `stopping` <- `commands`.
"""
import gc
import sys
import traceback

from cstm_foundation import stopping
from cstm_foundation.errors import UserError, debugging


def run_main(main, *args, at_safe_points: bool = False) -> int:
  """`main(*args)` with SIGTERM and SIGINT as stop requests (`stopping`: honoured at the safe
  points of a command that has them, else at once); 1 after printing a `UserError` as one line
  on stderr; a `stopping.Stopped`'s line and its status after a stop."""
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
  gc.collect()
  return status


def report(error: BaseException) -> None:
  """Prints `error` on stderr as a command's last words: one line for a `UserError`, its
  traceback for anything else (and for both under CSTM_DEBUG=1)."""
  if isinstance(error, UserError) and not debugging():
    print(f'error: {error}', file=sys.stderr, flush=True)
  else:
    traceback.print_exception(error, file=sys.stderr)
