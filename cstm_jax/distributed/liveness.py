"""A dead peer stops the whole job in bounded time, with one line that names it.

When one process of a multi-process job dies (SIGKILL, the OOM killer, a lost host), the others
wait in their next collective: for ever on GPUs (NCCL), until a socket error on CPUs (gloo). JAX's
coordination service notices after its heartbeat timeout and aborts every process with SIGABRT,
a C++ fatal line and a stack dump (exit 134). Its `missed_heartbeat_callback` cannot be set from
Python (this jaxlib fails to pass the status to it: std::bad_cast).

So each process runs a `PeerWatch`: a thread that bumps its own counter in the coordination
service's key-value store every `interval_s` and reads everyone else's in one call. A peer whose
counter has not moved for `timeout_s` (timed on this host's clock, so clocks need not agree)
ends this process with `error: process I of N (host H, pid P) stopped answering S s ago ...` and
exit status `EXIT_PEER_LOST` (75, EX_TEMPFAIL: start the job again; it resumes from its last
checkpoint). JAX's own heartbeat timeout is set above ours (`jax_heartbeat_timeout_s`), so this
line comes first. A process that fails with an error tells the others (`failed`), which stop at
once with its reason; one that ends normally says so (`done`) and is not waited for; one that
stops on request says so (`stopped`): the others stop at the same step, and one that does not
(left waiting in a collective) stops after `STOPPED_GRACE_S` with a line naming it.

Process 0 holds the service. When it dies, JAX stops every other process at once, before any
watch can: exit 134 and JAX's line `Terminating process because the JAX distributed service
detected fatal errors ... the leader task was preempted/died`.
"""
import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

from absl import logging

from cstm_foundation import commands, stopping
from cstm_foundation.errors import UserError, first_line

EXIT_PEER_LOST = 75
DEFAULT_TIMEOUT_S = 60.0
PREFIX = 'cstm_peers/'
RUNNING, DONE, FAILED, STOPPING, STOPPED = 'running', 'done', 'failed', 'stopping', 'stopped'
# How long a process outlives a peer that stopped on request before it stops too: the others
# stop at the same step (`stops`) a moment later; one left in a collective would wait for ever.
STOPPED_GRACE_S = 30.0


def jax_heartbeat_timeout_s(timeout_s: float) -> int:
  """JAX's heartbeat timeout for a watch of `timeout_s`: late enough that the watch speaks first."""
  return int(max(100, 2 * timeout_s + 20))


def interval_s(timeout_s: float) -> float:
  return max(0.2, min(5.0, timeout_s / 6))


class PeerWatch:
  """Watches the other processes through `client` (jax's DistributedRuntimeClient).

  Each process publishes `{host, pid, beat, state, why}` under `cstm_peers/<process>`; `state`
  is running, done (ended normally), failed (its own error, in `why`) or stopping (it saw a peer
  lost or failed). A peer that failed or stops ends this process too, at once.
  """

  def __init__(self, client, *, process_id: int, num_processes: int, timeout_s: float,
               workdir: Optional[str] = None,
               exit_fn: Callable[[int], None] = os._exit, clock=time.monotonic):
    self.client = client
    self.process_id = process_id
    self.num_processes = num_processes
    self.timeout_s = timeout_s
    self.workdir = workdir
    self._exit = exit_fn
    self._clock = clock
    self._stop = threading.Event()
    self._lost = threading.Event()
    self._beat = 0
    self._me = {'host': socket.gethostname(), 'pid': os.getpid()}
    self._seen = {}  # process -> (record, time it last changed)
    self._unanswered_since = None
    self._thread = None

  def _publish(self, state: str = RUNNING, why: str = '') -> None:
    self._beat += 1
    self.client.key_value_set(
        f'{PREFIX}{self.process_id}',
        json.dumps({**self._me, 'beat': self._beat, 'state': state, 'why': why}),
        allow_overwrite=True)

  def start(self) -> 'PeerWatch':
    self._publish()
    now = self._clock()
    self._seen = {i: ({}, now) for i in range(self.num_processes) if i != self.process_id}
    self._thread = threading.Thread(target=self._run, name='peer-watch', daemon=True)
    self._thread.start()
    return self

  def _read(self, now: float) -> None:
    for key, value in self.client.key_value_dir_get(PREFIX):
      try:
        process = int(key.rsplit('/', 1)[1])
        record = json.loads(value)
      except (ValueError, IndexError):
        continue
      if process in self._seen and record != self._seen[process][0]:
        self._seen[process] = (record, now)

  def _name(self, process: int, record: dict) -> str:
    where = f" (host {record['host']}, pid {record['pid']})" if record.get('host') else ''
    return f'process {process} of {self.num_processes}{where}'

  def check(self) -> Optional[str]:
    """One round: publish, read the others; why this process must stop, or None."""
    now = self._clock()
    try:
      self._publish()
      self._read(now)
    except Exception as error:  # the coordinator (process 0's service) does not answer
      self._unanswered_since = self._unanswered_since or now
      if now - self._unanswered_since > self.timeout_s:
        return (f"the job's coordinator (process 0) has not answered for "
                f'{now - self._unanswered_since:.0f} s ({first_line(error, 200)})')
      return None
    self._unanswered_since = None
    for process, (record, since) in sorted(self._seen.items()):
      state = record.get('state', RUNNING)
      if state == FAILED:
        return f'{self._name(process, record)} stopped with an error ({record.get("why")})'
      if state == STOPPING:
        return f'{self._name(process, record)} stopped because {record.get("why")}'
      if state == STOPPED and now - since > max(self.timeout_s, STOPPED_GRACE_S):
        return (f'{self._name(process, record)} stopped on request '
                f'{now - since:.0f} s ago and this one did not')
      if state not in (DONE, STOPPED) and now - since > self.timeout_s:
        return (f'{self._name(process, record)} stopped answering {now - since:.0f} s ago: '
                'killed, out of memory, preempted or its host lost')
    return None

  def report(self, why: str) -> str:
    where = f' in {self.workdir}' if self.workdir else ''
    return (f'error: {why}; stopping process {self.process_id} too (--peer_timeout_s='
            f'{self.timeout_s:g}). Find the cause in that process\'s log, then start every '
            f'process again with the same command: the job resumes from its last checkpoint'
            f'{where}')

  def _settle(self, state: str, why: str) -> None:
    """Tells the others this process stops; process 0, whose service the others need to hear
    it, waits (a few beats at most) until each of them has stopped too."""
    try:
      self._publish(state, why)
      if self.process_id != 0:
        return
      deadline = self._clock() + 3 * interval_s(self.timeout_s) + 1
      while self._clock() < deadline:
        self._read(self._clock())
        if all(record.get('state', RUNNING) != RUNNING or self._clock() - since > self.timeout_s
               for record, since in self._seen.values()):
          return
        time.sleep(0.1)
    except Exception:  # the service is gone: nobody is left to tell
      pass

  def _run(self) -> None:
    while not self._stop.wait(interval_s(self.timeout_s)):
      why = self.check()
      if why and not self._stop.is_set():
        self._lost.set()
        stopping.flush_logs()
        print(self.report(why), file=sys.stderr, flush=True)
        self._settle(STOPPING, why)
        self._exit(1 if 'stopped with an error' in why else EXIT_PEER_LOST)
        return

  def _halt(self) -> None:
    self._stop.set()
    if self._thread is not None and self._thread is not threading.current_thread():
      self._thread.join(timeout=10)
    self._thread = None

  def done(self) -> None:
    """This process ended normally: stop watching, and tell the others not to wait for it."""
    self._end(DONE)

  def stopped(self) -> None:
    """This process stopped on request: stop watching, and tell the others, which stop at the
    same step or, left waiting, after a grace (`STOPPED_GRACE_S`)."""
    self._end(STOPPED)

  def _end(self, state: str) -> None:
    if self._thread is None:
      return
    self._halt()
    try:
      self._publish(state)
    except Exception as error:  # the job is ending anyway
      logging.info('Could not tell the other processes this one has %s: %s', state, error)

  def failed(self, error: BaseException) -> None:
    """This process failed with `error`. A failed collective (a peer died under it) waits for
    the watch to name the peer, which ends the process. Otherwise `error` is reported as by
    `run_main` (one line for a UserError, the traceback for a bug), the others are told, and the
    process ends with status 1 at once: JAX's exit would wait for the others at its shutdown
    barrier, and they are stopping."""
    if isinstance(error, Exception) and not isinstance(error, UserError):  # not Ctrl-C
      self._lost.wait(self.timeout_s + 2 * interval_s(self.timeout_s))
    if self._lost.is_set():  # the watch thread is reporting it and ends the process
      threading.Event().wait()
    self._halt()
    stopping.flush_logs()
    commands.report(error)
    self._settle(FAILED, first_line(error, 200))
    sys.stderr.flush()
    self._exit(1)


@contextlib.contextmanager
def watched(*, timeout_s: float, workdir: Optional[str] = None):
  """Runs the block under a `PeerWatch` when this is one process of several (and timeout_s > 0);
  a plain block otherwise."""
  import jax

  from cstm_jax.distributed import jax_private
  client = jax_private.distributed_client()
  if jax.process_count() <= 1 or client is None or not timeout_s or timeout_s <= 0:
    yield None
    return
  watch = PeerWatch(client, process_id=jax.process_index(), num_processes=jax.process_count(),
                    timeout_s=timeout_s, workdir=workdir).start()
  try:
    yield watch
  except stopping.Stopped:  # on request, where every process agreed to (`stops`): no failure
    watch.stopped()
    raise
  except BaseException as error:  # KeyboardInterrupt and SystemExit too: the others must know
    watch.failed(error)
    raise
  watch.done()
