"""The worker processes this project starts, and what their deaths mean.

Two kinds: the pools of `prepare` and of the synthetic generator (`imap`: a spawn-context
`ProcessPoolExecutor`, which fails once when a worker dies instead of starting new ones for ever
as `multiprocessing.Pool` does), and grain's loader workers (`data.num_workers`), whose death
grain reports as `RuntimeError('Worker process was terminated unexpectedly with exit code N')`
(`loader_error` turns that into one line, or into a stop).

A death is one of three things, each reported in one line:
- the stop the command was asked for: a SIGTERM to the whole process group (Ctrl-C does not kill
  workers: they ignore SIGINT) -> `stopping.Stopped`;
- workers that died before doing any work: spawned workers import the caller's main module, so a
  script without an `if __name__ == '__main__':` guard (or one read from standard input) cannot
  start them -> `WorkersCannotStart`;
- a crash (the out-of-memory killer, a SIGKILL, a segfault in a decoder) -> `WorkerDied`, naming
  the worker, its exit code and the likely cause.
"""
import collections
import concurrent.futures
import multiprocessing
import os
import re
import signal
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator, Optional

from cstm_foundation import stopping
from cstm_foundation.errors import UserError

GUARD_ADVICE = ("a script that calls it must put its top level under `if __name__ == "
                "'__main__':` (spawned workers import the script again) and cannot be read from "
                'standard input')
# The exit status of a spawned worker that found itself re-running an unguarded script.
EXIT_UNGUARDED = 3
AGAIN = 'the same command starts it again'


class WorkersCannotStart(UserError):
  """Worker processes died before doing any work."""


class WorkerDied(UserError):
  """A worker process died on its own (not of a stop request)."""


def _refuse_in_bootstrapping_child() -> None:
  """Ends this process quietly when it is a spawned worker still importing the parent's main
  module, i.e. re-running an unguarded script's top level, which is about to start workers of its
  own (Python would refuse with a traceback in every worker). The parent reports it once."""
  if getattr(multiprocessing.current_process(), '_inheriting', False):
    sys.exit(EXIT_UNGUARDED)


def check_spawnable(what: str, *, in_process: str) -> None:
  """Refuses, in one line, to start workers that cannot import the caller's main module: a script
  read from standard input (`python - <<EOF`), which spawned workers look for as a file. In a
  spawned worker re-running an unguarded script, ends that worker quietly instead. `in_process`:
  the setting that does the work without workers. Callers check before they write anything."""
  _refuse_in_bootstrapping_child()
  main = sys.modules.get('__main__')
  path = getattr(main, '__file__', None)
  if getattr(main, '__spec__', None) is None and path and not os.path.exists(path):
    raise WorkersCannotStart(
        f'{what}: worker processes cannot start from a script read from standard input '
        f"({path}): save it to a file with an `if __name__ == '__main__':` guard, or set "
        f'{in_process}')


def likely_cause(exitcode: Optional[int]) -> str:
  """Why a worker process ends with `exitcode`, in the words a user can act on."""
  if exitcode is None:
    return 'it ended without an exit status'
  if exitcode == -signal.SIGKILL:
    return ('killed by SIGKILL: most often the out-of-memory killer (`dmesg` names it); give the '
            'host more memory or lower data.num_workers or data.prefetch')
  if exitcode == -signal.SIGSEGV:
    return 'a crash in native code (SIGSEGV), most often a video decoder on a damaged file'
  if exitcode in (-signal.SIGTERM, -signal.SIGINT):
    return f'{signal.Signals(-exitcode).name} sent to the worker alone'
  if exitcode < 0:
    return f'killed by {signal.Signals(-exitcode).name}'
  if exitcode == EXIT_UNGUARDED:
    return 'it died at start: ' + GUARD_ADVICE
  return f'it exited with status {exitcode}: its error is printed above'


# --- Pools: prepare, the synthetic generator --------------------------------------------------

def imap(function: Callable, jobs: Iterable, *, workers: int, what: str,
         ordered: bool = True) -> Iterator:
  """`function(job)` for each of `jobs` in `workers` spawned processes (in this process when
  `workers` is 1), in the order of `jobs` (`ordered`) or as they finish. A stop request raises
  `stopping.Stopped` naming `what` and how far it got (the caller may catch it to say more);
  workers that cannot start, or one that dies, raise one line."""
  jobs = list(jobs)
  if workers <= 1:
    for done, job in enumerate(jobs):
      if stopping.requested():
        raise _stopped(what, done, len(jobs))
      yield function(job)
    return
  check_spawnable(what, in_process='workers=1 (--workers 1)')
  executor = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context('spawn'),
      initializer=stopping.ignore_interrupts)
  pending = collections.deque()
  queued = iter(jobs)
  done = 0
  try:
    for job in queued:  # a few jobs a worker in flight: bounded memory, busy workers
      pending.append(executor.submit(function, job))
      if len(pending) >= 4 * workers:
        break
    while pending:
      future = _next_done(pending, ordered=ordered, what=what, done=done, total=len(jobs))
      pending.remove(future)
      try:
        result = future.result()
      except BrokenProcessPool:
        raise _broken(what, done, len(jobs)) from None
      done += 1
      yield result
      for job in queued:
        pending.append(executor.submit(function, job))
        break
  finally:
    for future in pending:
      future.cancel()
    executor.shutdown(wait=not stopping.requested(), cancel_futures=True)
    if stopping.requested():  # workers killed by the group's signal are gone; any other goes
      for child in multiprocessing.active_children():
        child.kill()


def _next_done(pending, *, ordered: bool, what: str, done: int, total: int):
  """The next future to take (the first of `pending`, or whichever finishes first), waited for
  in polls that a stop request ends."""
  candidates = [pending[0]] if ordered else pending
  while True:
    if stopping.requested():
      raise _stopped(what, done, total)
    finished, _ = concurrent.futures.wait(candidates, timeout=0.2,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
    if finished:
      return next(f for f in candidates if f in finished)


def _stopped(what: str, done: int, total: int) -> stopping.Stopped:
  return stopping.Stopped(stopping.message(f'{what} after {done} of {total}', lost=True,
                                           resumes=AGAIN), lost=True)


def _broken(what: str, done: int, total: int) -> BaseException:
  """The error for a pool whose worker died after `done` of `total` jobs."""
  if stopping.worker_died_of_stop(-signal.SIGTERM):
    return _stopped(what, done, total)
  if done == 0:
    return WorkersCannotStart(
        f'the worker processes of {what} died before doing any work: {GUARD_ADVICE}; or pass '
        'workers=1 (--workers 1) to work in this process')
  return WorkerDied(
      f'a worker process of {what} died after {done} of {total} (killed, most often by the '
      'out-of-memory killer: `dmesg` names it, or crashed in native code); run again with fewer '
      'workers (--workers)')


# --- grain's loader workers -------------------------------------------------------------------

_GRAIN_DEATH = re.compile(r'Worker process was terminated unexpectedly with exit code (-?\d+)')


def loader_error(error: BaseException, *, batches_seen: int) -> BaseException:
  """What a loader error means: `error` itself, or (for a dead grain worker) the stop it died
  of, workers that could not start, or a crash named with its exit code and likely cause."""
  match = _GRAIN_DEATH.search(str(error)) if isinstance(error, RuntimeError) else None
  if match is None:
    return error
  exitcode = int(match.group(1))
  if stopping.worker_died_of_stop(exitcode):
    return stopping.Stopped(stopping.message('while loading data'))
  worker = _dead_loader_worker(exitcode)
  if batches_seen == 0 and exitcode > 0:
    return WorkersCannotStart(
        f'the loader worker processes died before making a batch (exit code {exitcode}): '
        f'{GUARD_ADVICE}; or set data.num_workers=0 to load in this process')
  return WorkerDied(f'{worker} died with exit code {exitcode} ({likely_cause(exitcode)}); the '
                    'same command resumes from the last checkpoint')


def loaded(iterator) -> Iterator:
  """The batches of a loader `iterator`, a worker's death raised as what it means
  (`loader_error`)."""
  seen = 0
  while True:
    try:
      batch = next(iterator)
    except StopIteration:
      return
    except RuntimeError as error:
      explained = loader_error(error, batches_seen=seen)
      if explained is error:
        raise
      raise explained from None
    if seen == 0:
      note_loader_workers()
    seen += 1
    yield batch


def ignore_interrupts_in_loader(worker_index: int, worker_count: int) -> None:
  """grain's `worker_init_fn`: loader workers leave Ctrl-C to the command."""
  del worker_index, worker_count
  stopping.ignore_interrupts()


_seen_loader_workers: dict[int, multiprocessing.Process] = {}


def note_loader_workers() -> None:
  """Remembers the loader worker processes alive now, so a death can name its process."""
  for child in multiprocessing.active_children():
    if child.name.startswith('grain-'):
      _seen_loader_workers[child.pid] = child


def _dead_loader_worker(exitcode: int) -> str:
  for pid, child in list(_seen_loader_workers.items()):
    if child.exitcode is not None:
      del _seen_loader_workers[pid]
      if child.exitcode == exitcode:
        return f'loader worker process {pid}'
  return 'a loader worker process'
