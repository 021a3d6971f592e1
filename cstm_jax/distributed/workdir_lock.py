"""One training run per workdir: `workdir/LOCK`, taken at start by process 0, kept fresh while
the run lives, removed when it ends.

The lock file says who holds it (host, pid, SLURM job, start time) and when the holder last
said it was alive (`heartbeat`, rewritten every `HEARTBEAT_S`). A second run is refused in one
line naming the holder. A lock whose holder is gone is taken over with a warning, so the same
command still resumes after a kill or a preemption: on the same host when its pid no longer
runs; from another host when its heartbeat is older than `STALE_S`, or at once when it carries
this run's SLURM job id (a requeued job). The lock is created exclusively: O_EXCL locally and on
shared file systems, Cloud Storage's `ifGenerationMatch=0` precondition on gs://. Taking over a
stale lock is a read, then a write.
"""
import datetime
import json
import os
import socket
import threading
import time
from typing import Optional

from absl import logging

from cstm_foundation import paths
from cstm_foundation.errors import UserError

NAME = 'LOCK'
HEARTBEAT_S = 60.0
STALE_S = 300.0  # 5 heartbeats missed


class WorkdirInUse(UserError):
  """Another run holds the workdir."""


def _stamp(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds).strftime('%Y-%m-%d %H:%M:%S')


def _pid_alive(pid: int) -> bool:
  """Whether `pid` runs on this host; a zombie (killed, not yet reaped: common in containers
  whose first process reaps nothing) does not."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rpartition(')')[2].split()[0] != 'Z'
  except (OSError, IndexError):
    return True


def holder_gone(holder: dict, now: float, host: str, job: Optional[str]) -> Optional[str]:
  """Why the lock's holder is gone (or 'held by this process'), or None if it may be alive."""
  if holder.get('host') == host:
    if holder.get('pid') == os.getpid():
      return 'held by this process'
    if not _pid_alive(int(holder.get('pid', -1))):
      return f"its process {holder.get('pid')} no longer runs"
    return None
  if job and holder.get('slurm_job') == job:
    return f'it is this SLURM job ({job}), requeued'
  age = now - float(holder.get('heartbeat', 0))
  if age > STALE_S:
    return f'its last heartbeat was {age:.0f} s ago'
  return None


class WorkdirLock:
  """`with WorkdirLock(workdir):` holds the workdir's lock for the block (a no-op outside
  process 0, whose job it is)."""

  def __init__(self, workdir, active: bool = True):
    self.path = paths.resolve(workdir) / NAME
    self.active = active
    self._stop = threading.Event()
    self._thread = None
    self.record = {'host': socket.gethostname(), 'pid': os.getpid(),
                   'slurm_job': os.environ.get('SLURM_JOB_ID'), 'started': time.time()}

  def __enter__(self):
    if self.active:
      self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()
    return False

  def _text(self) -> str:
    return json.dumps({**self.record, 'heartbeat': time.time()}) + '\n'

  def _read(self) -> Optional[dict]:
    try:
      return json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except (ValueError, OSError):  # half-written or unreadable: treat as stale
      return {}

  def _create(self) -> bool:
    """Writes the lock if there is none; False if one exists."""
    if paths.is_remote(self.path):
      import fsspec
      fs, where = fsspec.core.url_to_fs(str(self.path))
      try:
        fs.pipe_file(where, self._text().encode(), mode='create')  # ifGenerationMatch=0
      except FileExistsError:
        return False
      fs.invalidate_cache(where)
      return True
    try:
      fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f:
      f.write(self._text())
    return True

  def acquire(self) -> None:
    for _ in range(3):  # another starter may remove or take a stale lock between our steps
      if self._create():
        break
      holder = self._read()
      if holder is None:
        continue
      why = (holder_gone(holder, time.time(), self.record['host'], self.record['slurm_job'])
             if holder else 'the lock file is unreadable')
      if why is None:
        age = time.time() - float(holder.get('heartbeat', 0))
        raise WorkdirInUse(
            f"{self.path.parent}: another run is training in this workdir (host "
            f"{holder.get('host')}, pid {holder.get('pid')}"
            + (f", SLURM job {holder['slurm_job']}" if holder.get('slurm_job') else '')
            + f", since {_stamp(float(holder.get('started', 0)))}, alive {age:.0f} s ago); "
            f'stop it or give this run another --workdir. A lock left by a run that died on '
            f'another host is taken over once it is {STALE_S:.0f} s old, or remove {self.path}')
      if why != 'held by this process':
        logging.warning('Taking over the lock of %s from host %s pid %s: %s', self.path.parent,
                        holder.get('host'), holder.get('pid'), why)
      paths.write_text(self.path, self._text())
      break
    else:
      raise WorkdirInUse(f'{self.path}: could not take the workdir lock; try again')
    self._thread = threading.Thread(target=self._beat, name='workdir-lock', daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    while not self._stop.wait(HEARTBEAT_S):
      try:
        paths.write_text(self.path, self._text())
      except OSError as error:  # a full disk, say: the run goes on; a later start may take over
        logging.warning('Could not refresh %s: %s', self.path, error)

  def release(self) -> None:
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join(timeout=5)
    self._thread = None
    holder = self._read()
    if holder and holder.get('pid') == self.record['pid'] and \
        holder.get('host') == self.record['host']:
      try:
        self.path.unlink()
      except FileNotFoundError:
        pass
