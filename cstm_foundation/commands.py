"""The top of every command: stop requests, one-line reports of user errors, the exit status.

The foundation's imports run one way: `errors` <- `logs` <- `stopping` <- `commands`.
"""
import gc
import multiprocessing
import sys
import time
import traceback

from cstm_foundation import stopping
from cstm_foundation.errors import UserError, debugging


def run_main(main, *args, at_safe_points: bool = False) -> int:
  """`main(*args)` with SIGTERM and SIGINT as stop requests (`stopping`: honoured at the safe
  points of a command that has them, else at once); 1 after printing a `UserError` as one line
  on stderr; a `stopping.Stopped`'s line and its status after a stop. However it ends, its
  worker processes are ended before it returns (`end_children`)."""
  before = set(multiprocessing.active_children())
  with stopping.handled(at_safe_points=at_safe_points):
    try:
      status = main(*args)
    except stopping.Stopped as stop:
      print(stop, file=sys.stderr, flush=True)
      if stop.abandons_threads:
        stopping.exit_now(stop.exit_status)
      status = stop.exit_status
    except UserError as error:
      if debugging():
        raise
      report(error)
      status = 1
  # What a stop or an error left half-used (a loader's worker processes and queues, held by the
  # frames of its traceback) is closed now, while multiprocessing's queues are open: at the
  # interpreter's exit their finalizers would run after the queues' and print tracebacks.
  gc.collect()
  end_children(keep=before)
  return status


def end_children(grace_s: float = 10.0, *, keep=frozenset()) -> list[int]:
  """Joins the worker processes this command started and left running (each pool and loader
  ends its own; this is the net under them), killing those still alive after `grace_s`: none
  is left to multiprocessing's exit hook. `keep`: processes that were there before the command
  (a program that runs commands). Returns the pids it had to end."""
  children = [c for c in multiprocessing.active_children() if c not in keep]
  deadline = time.monotonic() + grace_s
  for child in children:
    child.join(max(0.0, deadline - time.monotonic()))
  ended = []
  for child in children:
    if child.is_alive():
      child.kill()
      child.join()
      ended.append(child.pid)
  return ended


def report(error: BaseException) -> None:
  """Prints `error` on stderr as a command's last words: one line for a `UserError`, its
  traceback for anything else (and for both under CSTM_DEBUG=1)."""
  if isinstance(error, UserError) and not debugging():
    print(f'error: {error}', file=sys.stderr, flush=True)
  else:
    traceback.print_exception(error, file=sys.stderr)
