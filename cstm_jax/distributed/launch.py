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
"""
import glob
import os
import re
from typing import Mapping, Optional, Sequence

from absl import logging

from cstm_jax.distributed import liveness


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


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, device_ids: Optional[Sequence[int]] = None,
               environ: Mapping[str, str] = os.environ,
               peer_timeout_s: float = liveness.DEFAULT_TIMEOUT_S) -> None:
  """`jax.distributed.initialize` when this job has several processes; nothing otherwise.

  JAX's heartbeat timeout is set above `peer_timeout_s`, so that `liveness.watched` reports a lost
  process before JAX aborts.
  """
  if not coordinator_address and cluster_processes(environ) <= 1:
    return
  import jax
  # CPU devices of several processes talk over gloo (tests, CPU clusters); no effect on GPU/TPU.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if device_ids is None:
    device_ids = local_device_ids(environ, visible_gpus(environ))
  jax.distributed.initialize(
      coordinator_address, num_processes, process_id,
      local_device_ids=None if device_ids is None else list(device_ids),
      heartbeat_timeout_seconds=liveness.jax_heartbeat_timeout_s(peer_timeout_s))
  logging.info('process %d of %d; local devices %s', jax.process_index(), jax.process_count(),
               ', '.join(str(d) for d in jax.local_devices()))
