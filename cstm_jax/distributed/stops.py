"""Stop requests agreed by every process of a job, so that they stop at the same point.

A SIGTERM may reach one host of a job, or every host a moment apart (`scancel`, a preempted
slice), each between different steps. The processes of a job must stop at the same step: the
checkpoint they save is written together, and a process that runs one step more than another
waits in its collectives for ever. `agreed()` is called by every process at the same points (after
each training step, before each evaluation batch, after the first compile): it gathers each
process's request and answers the same for all. In a single process it is the local request and
costs nothing.
"""
import jax
import numpy as np

from cstm_foundation import stopping


def agreed() -> bool:
  """Whether any process of the job has been asked to stop (a collective with several
  processes: every process must call it at the same point)."""
  local = stopping.requested()
  if jax.process_count() == 1:
    return local
  from jax.experimental import multihost_utils
  anyone = bool(np.any(multihost_utils.process_allgather(np.array([local], np.int32))))
  if anyone and not local:
    stopping.request_from_peer()
  return anyone
