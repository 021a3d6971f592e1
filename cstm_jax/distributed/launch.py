"""One process of a multi-process job: finding its peers and choosing its local devices.

Under SLURM or Open MPI, `jax.distributed.initialize()` reads the job from the environment and
gives each process the one GPU numbered by its local rank. That is wrong in two common layouts,
which `local_device_ids` corrects:
- one process per node (`--ntasks-per-node=1`): the process should drive every GPU it sees, not
  only GPU 0;
- one process per GPU with per-task binding (`--gpus-per-task=1`, `--gpu-bind=single:1`): the
  process sees a single GPU, which is GPU 0 for it, whatever its local rank.
On a Cloud TPU slice jax finds its peers from the TPU metadata; elsewhere pass
`--coordinator_address`, `--num_processes` and `--process_id`.

While the job forms, a `JoinWatch` bounds the wait. JAX's own bound (`initialization_timeout`)
aborts the process with a C++ stack dump, and a process cannot tell a late peer from a dead one
before the job forms; so after `--initialization_timeout_s` the process ends with one line and
exit status 75 (start every process again), sooner where it can tell: a coordinator that accepted
connections and then stopped (killed) ends it after `--peer_timeout_s`, and a stop request ends
it after `STOP_GRACE_S` if the job has not formed by then (nothing has run: status 0).
"""
import glob
import os
import re
import socket
import sys
import threading
import time
from typing import Callable, Mapping, Optional, Sequence

from absl import logging

from cstm_foundation import stopping
from cstm_jax.distributed import liveness

DEFAULT_INITIALIZATION_TIMEOUT_S = 300.0  # JAX's: the hosts of a TPU slice may start minutes apart
# How long a process asked to stop while the job forms still waits for it to form: formed, the job
# stops as one (every process at the same point); not formed, there is nothing to stop together.
STOP_GRACE_S = 10.0


def cluster_processes(environ: Mapping[str, str]) -> int:
  """Processes in this job as SLURM, Open MPI or a Cloud TPU slice announce them (1: none)."""
  for variable in ('SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    if variable in environ:
      return int(environ[variable])
  return len(environ.get('TPU_WORKER_HOSTNAMES', 'localhost').split(','))


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> Optional[int]:
  """Tasks on this node: SLURM_STEP_TASKS_PER_NODE ('8(x2)', '2,1') at SLURM_NODEID."""
  spec = environ.get('SLURM_STEP_TASKS_PER_NODE') or environ.get('SLURM_TASKS_PER_NODE')
  if spec:
    counts = []
    for part in spec.split(','):
      match = re.fullmatch(r'(\d+)(?:\(x(\d+)\))?', part.strip())
      if not match:
        return None
      counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(environ.get('SLURM_NODEID', 0))
    return counts[node] if node < len(counts) else None
  if 'SLURM_NTASKS_PER_NODE' in environ:
    return int(environ['SLURM_NTASKS_PER_NODE'])
  return None


def _tasks_on_node(environ: Mapping[str, str]) -> tuple[Optional[int], int]:
  """(processes on this node, this process's rank among them); (None, 0) outside SLURM/MPI."""
  if 'SLURM_LOCALID' in environ:
    return _slurm_tasks_per_node(environ), int(environ['SLURM_LOCALID'])
  if 'OMPI_COMM_WORLD_LOCAL_RANK' in environ:
    return (int(environ.get('OMPI_COMM_WORLD_LOCAL_SIZE', 0)) or None,
            int(environ['OMPI_COMM_WORLD_LOCAL_RANK']))
  return None, 0


def visible_gpus(environ: Mapping[str, str]) -> int:
  """GPUs this process can see: CUDA_VISIBLE_DEVICES, else the node's /dev/nvidiaN files."""
  if 'CUDA_VISIBLE_DEVICES' in environ:
    return len([d for d in environ['CUDA_VISIBLE_DEVICES'].split(',') if d.strip()])
  return len(glob.glob('/dev/nvidia[0-9]*'))


def local_device_ids(environ: Mapping[str, str], gpus: int) -> Optional[list[int]]:
  """The GPUs (numbered as this process sees them) it should use, or None for jax's choice.

  None outside SLURM / Open MPI and where there are no GPUs (CPU, TPU).
  """
  tasks, rank = _tasks_on_node(environ)
  if tasks is None or gpus == 0:
    return None
  if tasks == 1 or gpus < tasks or 'SLURM_GPUS_PER_TASK' in environ:
    return list(range(gpus))  # every GPU it sees is its own
  per_task = gpus // tasks
  return list(range(rank * per_task, (rank + 1) * per_task))


def process_of(environ: Mapping[str, str]) -> Optional[int]:
  """This process's index as SLURM, Open MPI or a Cloud TPU slice announce it (None: unknown)."""
  for variable in ('SLURM_PROCID', 'OMPI_COMM_WORLD_RANK', 'TPU_WORKER_ID', 'CLOUD_TPU_TASK_ID'):
    if environ.get(variable, '').isdigit():
      return int(environ[variable])
  return None


def accepts_connections(address: str, timeout_s: float = 1.0) -> bool:
  """Whether something listens at `address` ('host:port', '[v6]:port')."""
  host, _, port = address.rpartition(':')
  try:
    with socket.create_connection((host.strip('[]'), int(port)), timeout=timeout_s):
      return True
  except (OSError, ValueError):
    return False


class JoinWatch:
  """Ends this process with one line when the job does not form (see the module's docstring).

  `formed()` once `jax.distributed.initialize` has returned; until then a thread checks every
  `poll_s` (`check`) and exits with the status and line it returns.
  """

  def __init__(self, *, process_id: Optional[int], num_processes: Optional[int],
               coordinator_address: Optional[str], timeout_s: float, peer_timeout_s: float,
               poll_s: float = 0.5, accepts: Callable[[str], bool] = accepts_connections,
               exit_fn: Callable[[int], None] = stopping.exit_now, clock=time.monotonic):
    self.process = ('this process' if process_id is None else
                    f'process {process_id}' + (f' of {num_processes}' if num_processes else ''))
    self.coordinator = coordinator_address
    # Only the other processes watch the coordinator (process 0 holds it).
    self.watches_coordinator = bool(coordinator_address) and process_id != 0
    self.timeout_s = timeout_s
    self.peer_timeout_s = peer_timeout_s
    self.poll_s = poll_s
    self._accepts = accepts
    self._exit = exit_fn
    self._clock = clock
    self._started = clock()
    self._coordinator_seen = False
    self._coordinator_gone_since = None
    self._stop_seen_at = None
    self._formed = False
    self._lock = threading.Lock()
    self._done = threading.Event()
    self._thread = None

  def check(self) -> Optional[tuple[int, str]]:
    """(exit status, last line) when this process must stop waiting for the job; None to wait."""
    now = self._clock()
    waited = now - self._started
    if stopping.requested():
      self._stop_seen_at = self._stop_seen_at or now
      if now - self._stop_seen_at >= STOP_GRACE_S:
        return 0, stopping.message(f'before the job formed ({self.process} waited {waited:.0f} s '
                                   'for the others; nothing had run)')
    at = f' at {self.coordinator}' if self.coordinator else ''
    if self.watches_coordinator:
      if self._accepts(self.coordinator):
        self._coordinator_seen, self._coordinator_gone_since = True, None
      elif self._coordinator_seen:
        self._coordinator_gone_since = self._coordinator_gone_since or now
        gone = now - self._coordinator_gone_since
        if self.peer_timeout_s > 0 and gone >= self.peer_timeout_s:
          return liveness.EXIT_PEER_LOST, (
              f"error: the job's coordinator (process 0){at} stopped accepting connections "
              f'{gone:.0f} s ago, before the job formed: killed, preempted or its host lost; '
              f'stopping {self.process} too (--peer_timeout_s={self.peer_timeout_s:g}). Find the '
              "cause in that process's log, then start every process again with the same command")
    if self.timeout_s > 0 and waited >= self.timeout_s:
      if self.watches_coordinator and not self._coordinator_seen:
        whom = (f"for the job's coordinator (process 0){at}, which never accepted a connection: "
                'not started, killed, or the address is wrong or blocked')
      else:
        whom = (f'for the other processes to join the job{at}: one of them did not start, was '
                'killed or cannot reach the coordinator')
      return liveness.EXIT_PEER_LOST, (
          f'error: {self.process} waited {waited:.0f} s {whom} (--initialization_timeout_s='
          f'{self.timeout_s:g}); start every process again with the same command')
    return None

  def _run(self) -> None:
    while not self._done.wait(self.poll_s):
      verdict = self.check()
      if verdict is None:
        continue
      with self._lock:
        if self._formed:
          return
        status, line = verdict
        stopping.flush_logs()
        print(line, file=sys.stderr, flush=True)
        self._exit(status)
        return

  def start(self) -> 'JoinWatch':
    self._thread = threading.Thread(target=self._run, name='join-watch', daemon=True)
    self._thread.start()
    return self

  def formed(self) -> None:
    """The job has formed: stop watching (a verdict being reported still ends the process)."""
    with self._lock:
      self._formed = True
    self._done.set()


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, device_ids: Optional[Sequence[int]] = None,
               environ: Mapping[str, str] = os.environ,
               peer_timeout_s: float = liveness.DEFAULT_TIMEOUT_S,
               initialization_timeout_s: float = DEFAULT_INITIALIZATION_TIMEOUT_S) -> None:
  """`jax.distributed.initialize` when this job has several processes; nothing otherwise.

  JAX's heartbeat timeout is set above `peer_timeout_s`, so that `liveness.watched` reports a lost
  process before JAX aborts, and its initialization timeout above `initialization_timeout_s`, so
  that a `JoinWatch` reports a job that does not form (0: JAX's timeout alone, which aborts).
  """
  if not coordinator_address and cluster_processes(environ) <= 1:
    return
  import jax
  # CPU devices of several processes talk over gloo (tests, CPU clusters); no effect on GPU/TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if device_ids is None:
    device_ids = local_device_ids(environ, visible_gpus(environ))
  watch = JoinWatch(process_id=process_id if process_id is not None else process_of(environ),
                    num_processes=num_processes or cluster_processes(environ),
                    coordinator_address=coordinator_address,
                    timeout_s=initialization_timeout_s, peer_timeout_s=peer_timeout_s).start()
  try:
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id,
        local_device_ids=None if device_ids is None else list(device_ids),
        heartbeat_timeout_seconds=liveness.jax_heartbeat_timeout_s(peer_timeout_s),
        initialization_timeout=int(initialization_timeout_s + 30 if initialization_timeout_s > 0
                                   else DEFAULT_INITIALIZATION_TIMEOUT_S))
  finally:
    watch.formed()
  logging.info('process %d of %d; local devices %s', jax.process_index(), jax.process_count(),
               ', '.join(str(d) for d in jax.local_devices()))
