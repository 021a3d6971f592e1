"""A stop request (SIGTERM, SIGINT) honoured where it lands: at the next safe point, in one line.

How a stop arrives: Ctrl-C sends SIGINT to the terminal's whole foreground process group; a
preempted VM's shutdown, `scancel --signal=TERM` and a SLURM requeue send SIGTERM to every
process, loader workers included; a scheduler may also signal the main process alone. Every
command runs under `handled()` (`commands.run_main`; `main.py` installs it first of all), which
turns the first SIGTERM or SIGINT into a request: a flag the command checks at its safe points
(`requested`, `check`), where it saves what it can and raises `Stopped`. `run_main` prints the
`Stopped` message as the command's last line and exits with status 0 when nothing was lost (the
same command resumes where it stopped), `128 + signal` when something was. A second signal stops
at once, with one line and status `128 + signal`: nothing more is saved (the last checkpoint is
intact).

Worker processes start with both signals blocked (`install`) and, in their initializer
(`ignore_interrupts`), ignore SIGINT and die of SIGTERM: Ctrl-C reaches the command alone, which
closes them; a SIGTERM to the group kills them, and `worker_died_of_stop` tells such a death (the
command was asked to stop too) from a crash.
"""
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
  """The command stopped on request at a safe point. `str(error)` is its last line; `lost`:
  whether work was lost (then the exit status is 128 + the signal's number)."""

  def __init__(self, message: str, *, lost: bool = False, abandons_threads: bool = False):
    super().__init__(message)
    self.lost = lost
    # Work still runs in a thread that cannot be interrupted (a compile): the command ends with
    # os._exit once its line is out, as the interpreter's exit would wait for or crash in it.
    self.abandons_threads = abandons_threads

  @property
  def exit_status(self) -> int:
    return 128 + (_state.signum or signal.SIGTERM) if self.lost else 0


class _State:
  def __init__(self):
    self.signum: Optional[int] = None  # the first stop signal received
    self.agreed = False  # set by a peer's request (a multi-process job), not by a signal here
    self.listener: Optional[threading.Thread] = None  # takes the signals (`install`)
    self.listening: Optional[threading.Event] = None
    self.previous: dict = {}  # the handlers before `install`
    self.at_safe_points = False  # whether the command checks for requests (else: stop at once)


_state = _State()


def requested() -> bool:
  """Whether this command has been asked to stop."""
  return _state.signum is not None or _state.agreed


def request_from_peer() -> None:
  """Marks this process as stopping because another process of the job was asked to."""
  _state.agreed = True


def check(where: str, *, lost: bool = False) -> None:
  """Raises `Stopped` ('Stopped <where> on request (SIGTERM) ...') when a stop was requested."""
  if requested():
    raise Stopped(message(where, lost=lost), lost=lost)


def message(where: str, *, lost: bool = False, resumes: str = 'the same command resumes') -> str:
  """The stop's last line: where it stopped, and what the user does next."""
  tail = ('; its unfinished work is lost: ' if lost else '; ') + resumes
  how = (f'on request ({signal.Signals(_state.signum).name})' if _state.signum is not None else
         'as another process of the job was asked to')
  return f'Stopped {where} {how}{tail}.'


def worker_died_of_stop(exitcode: Optional[int], *, grace_s: float = 2.0) -> bool:
  """Whether a worker process that ended with `exitcode` died of the stop this command was asked
  for: a SIGTERM or SIGINT that reached the whole process group. The command's own signal may be
  handled a moment after the worker's death is seen, so this waits up to `grace_s` for it."""
  if exitcode not in (-signal.SIGTERM, -signal.SIGINT):
    return False
  deadline = time.monotonic() + grace_s
  while not requested() and time.monotonic() < deadline:
    time.sleep(0.05)
  return requested()


def ignore_interrupts(*_) -> None:
  """A worker process's initializer: it leaves Ctrl-C (SIGINT to the group) to the command, which
  closes its workers, and dies of a SIGTERM. (It started with both blocked, as the command's
  threads have them: `install`.)"""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def request(signum: int) -> None:
  """Records a stop request, as the first SIGTERM or SIGINT (`signum`) does."""
  _state.signum = signum


def _on_signal(signum: int) -> None:
  if _state.signum is not None:  # the second: at once
    name = signal.Signals(signum).name
    flush_logs()
    print(f'Stopped at once on a second stop signal ({name}); nothing more was saved: the same '
          'command resumes from the last checkpoint.', file=sys.stderr, flush=True)
    exit_now(128 + signum)
  request(signum)
  if not _state.at_safe_points:  # a command without safe points (a benchmark, an export)
    name = signal.Signals(signum).name
    flush_logs()
    print(f'Stopped on request ({name}); the command did not finish: run it again.',
          file=sys.stderr, flush=True)
    exit_now(128 + signum)
  from absl import logging
  logging.warning('%s: stopping at the next safe point (%s stops at once)',
                  signal.Signals(signum).name,
                  'Ctrl-C again' if signum == signal.SIGINT else 'a second signal')


def _handler(signum, frame) -> None:
  del frame
  _on_signal(signum)


def _listen(done: threading.Event) -> None:
  while not done.is_set():
    info = signal.sigtimedwait(SIGNALS, 0.25)
    if info is not None:
      _on_signal(info.si_signo)


def install(*, at_safe_points: bool = False) -> bool:
  """Makes SIGTERM and SIGINT stop requests, from the main thread, before other threads start
  (`main.py` does it first): both are blocked in this thread, hence in every thread and process
  it starts later, and one thread takes them (`sigtimedwait`). So no library thread or handler
  sees them (JAX's distributed runtime installs one for SIGTERM), a worker process cannot die of
  Ctrl-C while it starts (it unblocks them in `ignore_interrupts`), and the request is recorded
  at once, whatever the main thread is waiting on. `at_safe_points`: the command checks for a
  request at its safe points (`check`, `requested`); otherwise the first signal ends it at once,
  in one line. Returns whether it installed them now (False: already installed, or not the main
  thread)."""
  if _state.listener is not None or threading.current_thread() is not threading.main_thread():
    return False
  _state.at_safe_points = at_safe_points
  # multiprocessing starts its resource tracker with the first worker, and unblocks both signals
  # in the starting thread afterwards: started now, it leaves the mask alone.
  from multiprocessing import resource_tracker

  from cstm_foundation import logs
  logs.quiet_exit_warnings()  # the tracker takes its warning filters from the environment
  resource_tracker.ensure_running()
  # A thread started before (a library's) may still take them: then this handler records it.
  _state.previous = {s: signal.signal(s, _handler) for s in SIGNALS}
  signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
  _state.listening = threading.Event()
  _state.listener = threading.Thread(target=_listen, args=(_state.listening,),
                                     name='stop-signals', daemon=True)
  _state.listener.start()
  return True


def reclaim() -> None:
  """Takes SIGTERM and SIGINT back from a library that installed its own handler (JAX's
  distributed runtime does, for its preemption notice): a library thread that does not block
  them may receive them, and must hand them to `_on_signal`. (Main thread, after `install`.)"""
  if _state.listener is not None and threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, _handler)


def uninstall() -> None:
  """Undoes `install`: the signals' usual behaviour back, no request kept."""
  if _state.listener is not None:
    _state.listening.set()
    _state.listener.join()
    _state.listener = None
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    for signum, handler in _state.previous.items():
      signal.signal(signum, handler)
  reset()


class handled:
  """`with handled(at_safe_points=...):` the block runs with stop requests on (`install`); after
  it, the signals behave as before (a command run from a test, or twice in one process)."""

  def __init__(self, *, at_safe_points: bool = False):
    self.at_safe_points = at_safe_points

  def __enter__(self):
    self._installed = install(at_safe_points=self.at_safe_points)
    self._mode = _state.at_safe_points
    _state.at_safe_points = self.at_safe_points  # installed already (main.py): this command's
    return self

  def __exit__(self, *exc):
    _state.at_safe_points = self._mode
    if self._installed:
      uninstall()
    return False


def reset() -> None:
  """Forgets a request (tests; a command that ended)."""
  _state.signum, _state.agreed = None, False


def wait_while(busy: Callable[[], bool], *, poll_s: float = 0.1) -> bool:
  """Waits while `busy()`; returns False as soon as a stop is requested (True once not busy).
  For the main thread's waits on work in another thread (a compile), which a signal handler can
  interrupt only between polls."""
  while busy():
    if requested():
      return False
    time.sleep(poll_s)
  return True


def exit_now(status: int) -> None:
  """Ends the process with `status` at once, its logs flushed and its worker processes killed,
  without the interpreter's exit (which would wait for, or crash in, threads still working)."""
  flush_logs()
  for child in multiprocessing.active_children():
    child.kill()
  os._exit(status)


def flush_logs() -> None:
  """Flushes absl's and Python's log handlers, stdout and stderr."""
  from absl import logging
  for handler in logging.get_absl_logger().handlers + logging.logging.getLogger().handlers:
    try:
      handler.flush()
    except (OSError, ValueError):
      pass
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
