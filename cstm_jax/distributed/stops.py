"""Stop requests agreed by every process of a job, so that they stop at the same point.

A SIGTERM may reach one host of a job, or every host a moment apart (`scancel`, a preempted
slice), each between different steps. The processes of a job must stop at the same step: the
checkpoint they save is written together, and a process that runs one step more than another
waits in its collectives for ever. `agreed()` is called by every process at the same points
(before each evaluation batch, after the first compile): it gathers each process's request and
answers the same for all; `StepVote` does the same after each training step without waiting for
the devices. In a single process both are the local request and cost nothing.
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


class StepVote:
  """`agreed()` for the training loop, without holding it up: after each step every process
  casts its request into a max over all devices, dispatched like the step and read one step
  later, when it is long done. Every process reads the same vote after the same step, so they
  stop together, one step after the request reached them. (A single process reads its own
  request at once.)"""

  def __init__(self, mesh: jax.sharding.Mesh):
    self._pending = None
    self._multi = jax.process_count() > 1
    if self._multi:
      flat = jax.sharding.Mesh(mesh.devices.reshape(-1), ('all',))
      self._flags = jax.sharding.NamedSharding(flat, jax.sharding.PartitionSpec('all'))
      self._devices = [d for d in flat.devices if d.process_index == jax.process_index()]
      self._max = jax.jit(lambda flags: flags.max(),
                          out_shardings=jax.sharding.NamedSharding(
                              flat, jax.sharding.PartitionSpec()))

  def after_step(self) -> bool:
    """Whether to stop now (every process gets the same answer after the same step)."""
    if not self._multi:
      return stopping.requested()
    mine = np.array([stopping.requested()], np.int32)
    flags = jax.make_array_from_single_device_arrays(
        (self._flags.mesh.size,), self._flags, [jax.device_put(mine, d) for d in self._devices])
    previous, self._pending = self._pending, self._max(flags)
    if previous is None or not int(np.asarray(previous.addressable_data(0))):
      return False
    if not stopping.requested():
      stopping.request_from_peer()
    return True
