"""The train state (flax's TrainState with the BatchNorm statistics) and the variables of a run's
checkpoint. `program.build` lays the state out over the device mesh; nothing is built on one
device first."""
from typing import Any, NamedTuple

from flax.training import train_state

from cstm_jax.train import checkpoints


class TrainState(train_state.TrainState):
  """flax's TrainState (step, params, optimizer state) with the BatchNorm statistics."""
  batch_stats: Any


def variables_of(state) -> dict:
  """The model's variables `{'params', 'batch_stats'}` of a train state."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


class RestoredVariables(NamedTuple):
  variables: dict  # {'params', 'batch_stats'}
  step: int


def restore_variables(program, workdir, which: str) -> RestoredVariables:
  """The variables of the run's 'best' or 'latest' checkpoint, laid out as `program`'s state
  (a `program.Program`), and its step."""
  run_checkpoints = checkpoints.RunCheckpoints(workdir)
  try:
    state, step = run_checkpoints.restore_state(which, program.abstract_state, program.config)
  finally:
    run_checkpoints.close()
  return RestoredVariables(variables_of(state), step)
