"""The worker processes this project starts, and what their deaths mean.

Two kinds: the pools of `prepare` and of the synthetic generator (`imap`: spawned processes this
module owns, which fail once when a worker dies instead of starting new ones for ever as
`multiprocessing.Pool` does, and are joined however the pool ends), and grain's loader workers (`data.num_workers`), whose death
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
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import time
import traceback
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


def likely_cause(exitcode: Optional[int], *,
                 lower: str = 'data.num_workers or data.prefetch') -> str:
  """Why a worker process ends with `exitcode`, in the words a user can act on; `lower`: the
  settings that use less memory."""
  if exitcode is None:
    return 'it ended without an exit status'
  if exitcode == -signal.SIGKILL:
    return ('killed by SIGKILL: most often the out-of-memory killer (`dmesg` names it); give the '
            f'host more memory or lower {lower}')
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
#
# The pool owns its worker processes: each is a spawned `multiprocessing.Process` with one pipe
# to this process, and this process waits on the pipes and the processes' sentinels itself, in
# the calling thread. No thread, queue or wakeup pipe is left behind, and every exit (done, an
# error, a stop) ends and joins the workers before returning, so nothing is left to the
# interpreter's exit hooks. (`concurrent.futures.ProcessPoolExecutor`, used before, leaves its
# manager thread and wakeup pipe to `concurrent.futures.process._python_exit` when it is shut
# down without waiting, as a stop must: CPython's race on that pipe, gh-125451, fixed in 3.12.8
# and 3.13.1, then printed `OSError: [Errno 9] Bad file descriptor` after the stop's line on a
# loaded machine.)

IN_FLIGHT = 2  # jobs sent to a worker ahead of its results: it never waits for the next one
_POLL_S = 0.2  # how often a wait looks for a stop request


def _serve(connection, function: Callable) -> None:
  """A worker process: runs `function` on each (index, job) it receives, answering (index, True,
  result) or (index, False, exception), until told to end (None) or its pipe closes."""
  stopping.ignore_interrupts()
  while True:
    try:
      message = connection.recv()
    except (EOFError, OSError):
      return
    if message is None:
      return
    index, job = message
    try:
      reply = (index, True, function(job))
    except Exception as error:  # raised again in the command, with the worker's traceback
      reply = (index, False, (error, traceback.format_exc()))
    try:
      connection.send(reply)
    except (EOFError, OSError):
      return
    except Exception as error:  # an unpicklable result or exception
      connection.send((index, False, (RuntimeError(f'{type(error).__name__}: {error}'),
                                      traceback.format_exc())))


class RemoteTraceback(Exception):
  """The traceback of a job's error in its worker process (the error's cause)."""

  def __str__(self):
    return f'\n"""\n{self.args[0]}"""'


class _Worker:

  def __init__(self, context, function: Callable, number: int):
    self.connection, theirs = context.Pipe()
    self.process = context.Process(target=_serve, args=(theirs, function), daemon=True,
                                   name=f'pool-worker-{number}')
    self.process.start()
    theirs.close()
    self.jobs: collections.deque = collections.deque()  # indices sent, not yet answered
    self.closed = False  # its end of the pipe closed (it exited or died)


class _Pool:
  """`workers` spawned processes running `function`; `close()` ends and joins them."""

  def __init__(self, function: Callable, workers: int, *, what: str, total: int,
               resumes: Optional[str]):
    self.what, self.total, self.done, self.resumes = what, total, 0, resumes
    context = multiprocessing.get_context('spawn')
    self.workers: list[_Worker] = []
    try:
      for number in range(workers):
        self.workers.append(_Worker(context, function, number))
    except BaseException:
      self.close(kill=True)
      raise

  def send(self, index: int, job) -> bool:
    """Sends job `index` to the least busy worker; False when every worker has enough."""
    worker = min(self.workers, key=lambda w: (w.closed, len(w.jobs)))
    if worker.closed or len(worker.jobs) >= IN_FLIGHT:
      return False
    try:
      worker.connection.send((index, job))
    except OSError:  # it died: `receive` says how
      worker.closed = True
      return False
    worker.jobs.append(index)
    return True

  def receive(self) -> list[tuple[int, object]]:
    """The (index, result) pairs that arrive within one poll (often none); raises a job's
    exception, a stop request, or a worker's death as what it means."""
    if stopping.requested():
      raise _stopped(self.what, self.done, self.total, self.resumes)
    by_connection = {w.connection: w for w in self.workers}
    by_sentinel = {w.process.sentinel: w for w in self.workers}
    ready = multiprocessing.connection.wait([*by_connection, *by_sentinel], timeout=_POLL_S)
    results = []
    for connection in (r for r in ready if r in by_connection):
      worker = by_connection[connection]
      try:
        index, ok, value = connection.recv()
      except (EOFError, OSError):
        worker.closed = True  # it died: its sentinel says how
        continue
      worker.jobs.remove(index)
      if not ok:
        error, text = value
        raise error from RemoteTraceback(text)
      results.append((index, value))
    for sentinel in (r for r in ready if r in by_sentinel):
      worker = by_sentinel[sentinel]
      if not worker.closed and worker.connection.poll():
        continue  # its last answers first, at the next call
      worker.process.join()
      raise _death(self.what, self.done, self.total, worker.process, self.resumes)
    return results

  def close(self, *, kill: bool = False, grace_s: float = 5.0) -> None:
    """Ends every worker (asks them, or kills them when `kill`) and joins it."""
    for worker in self.workers:
      try:
        if not kill and worker.process.is_alive():
          worker.connection.send(None)
      except OSError:
        pass
    deadline = time.monotonic() + (0 if kill else grace_s)
    for worker in self.workers:
      worker.process.join(max(0.0, deadline - time.monotonic()))
      if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
      worker.connection.close()
      worker.process.close()
    self.workers = []


def imap(function: Callable, jobs: Iterable, *, workers: int, what: str, ordered: bool = True,
         resumes: Optional[str] = None) -> Iterator:
  """`function(job)` for each of `jobs` in `workers` spawned processes (in this process when
  `workers` is 1), in the order of `jobs` (`ordered`) or as they finish. A stop request raises
  `stopping.Stopped` naming `what` and how far it got; workers that cannot start, or one that
  dies, raise one line. `resumes`: what the same command does after a stop, when the caller
  keeps the results so far (the stop then loses nothing); without it, the work is lost.
  However it ends, the workers are ended and joined before it returns."""
  jobs = list(jobs)
  if not jobs:
    return
  if workers <= 1:
    for done, job in enumerate(jobs):
      if stopping.requested():
        raise _stopped(what, done, len(jobs), resumes)
      yield function(job)
    return
  check_spawnable(what, in_process='workers=1 (--workers 1)')
  pool = _Pool(function, min(workers, len(jobs)), what=what, total=len(jobs), resumes=resumes)
  window = 4 * len(pool.workers)  # results held for the ordered output, at most
  finished = False
  try:
    sent, ready = 0, {}
    while pool.done < len(jobs):
      while sent < min(len(jobs), pool.done + window) and pool.send(sent, jobs[sent]):
        sent += 1
      ready.update(pool.receive())
      while ready:
        index = pool.done if ordered else next(iter(ready))
        if index not in ready:
          break
        result = ready.pop(index)
        pool.done += 1
        yield result
    finished = True
  finally:
    pool.close(kill=not finished)


def _stopped(what: str, done: int, total: int, resumes: Optional[str]) -> stopping.Stopped:
  lost = resumes is None
  return stopping.Stopped(stopping.message(f'{what} after {done} of {total}', lost=lost,
                                           resumes=resumes or AGAIN), lost=lost)


def _death(what: str, done: int, total: int, process, resumes: Optional[str]) -> BaseException:
  """The error for a pool whose worker `process` died after `done` of `total` jobs."""
  exitcode = process.exitcode
  if stopping.worker_died_of_stop(exitcode):
    return _stopped(what, done, total, resumes)
  if done == 0 and (exitcode is None or exitcode > 0):
    return WorkersCannotStart(
        f'the worker processes of {what} died before doing any work: {GUARD_ADVICE}; or pass '
        'workers=1 (--workers 1) to work in this process')
  return WorkerDied(
      f'worker process {process.pid} of {what} died after {done} of {total} with exit code '
      f'{exitcode} ({likely_cause(exitcode, lower="--workers")}); {resumes or AGAIN}')


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
