"""The model, its optimizer and the train state, created and restored with their shardings.

A step of the run holds a `TrainState` whose leaves are laid out over the device mesh by
`sharding.state_shardings`; nothing is built on one device first.
"""
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from flax.training import train_state

from cstm_jax.train import checkpoints, optim
from cstm_jax.distributed import sharding
from cstm_jax.models.build import abstract_variables, build_model


class TrainState(train_state.TrainState):
  """flax's TrainState (step, params, optimizer state) with the BatchNorm statistics."""
  batch_stats: Any


def setup_mesh(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
  """The run's mesh over every device (`config.mesh.model` devices on the model axis), after
  checking that both batch sizes split over its data axis."""
  mesh = sharding.make_mesh(config.mesh.model)
  sharding.check_batch(config.data.batch_size, mesh)
  sharding.check_batch(config.data.eval_batch_size, mesh, 'evaluation batch')
  return mesh


def local_accelerators() -> int:
  """GPUs or TPU chips this process drives (0 on a CPU host)."""
  return sum(d.platform != 'cpu' for d in jax.local_devices())


class ModelAndOptimizer(NamedTuple):
  model: Any  # the Flax module
  schedule: Any  # step -> learning rate
  tx: Any  # the optax optimizer
  clips_shape: tuple  # a global training batch of clips, [N, T, H, W, 3]


def model_and_optimizer(config: ml_collections.ConfigDict,
                        steps_per_epoch: int) -> ModelAndOptimizer:
  """The model, its learning-rate schedule and optimizer, and the training batch's shape."""
  model = build_model(config.model)
  schedule = optim.learning_rate_schedule(config.optim, config.data.batch_size, steps_per_epoch)
  clips_shape = (config.data.batch_size, config.data.num_frames, config.data.crop,
                 config.data.crop, 3)
  abstract_params = abstract_variables(model, one_clip(clips_shape))['params']
  return ModelAndOptimizer(model, schedule,
                           optim.make_optimizer(config.optim, schedule, abstract_params),
                           clips_shape)


def one_clip(clips_shape) -> jax.ShapeDtypeStruct:
  """One float32 clip of a batch of `clips_shape`: enough to initialise, since no variable's
  shape depends on the batch."""
  return jax.ShapeDtypeStruct((1, *clips_shape[1:]), jnp.float32)


def _state_of(model, tx, variables) -> TrainState:
  # The step counter as a checkpoint restores it (int32, not weakly typed): a fresh and a
  # resumed run then trace the same train step, and a restart finds it in the compile cache.
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats']).replace(
                               step=jnp.zeros((), jnp.int32))


def _init_fn(model, tx, clips_shape):
  def init(rng):
    clip = one_clip(clips_shape)
    return _state_of(model, tx, model.init({'params': rng}, jnp.zeros(clip.shape, clip.dtype)))

  return init


def state_layout(model, tx, clips_shape, *, mesh, threshold=2**20):
  """(abstract state whose leaves carry their shardings, the shardings)."""
  abstract = jax.eval_shape(lambda v: _state_of(model, tx, v),
                            abstract_variables(model, one_clip(clips_shape)))
  shardings = sharding.state_shardings(abstract, mesh, threshold)
  with_shardings = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      abstract, shardings)
  return with_shardings, shardings


def create_train_state(model, tx, clips_shape, *, mesh, rng, threshold=2**20, shardings=None):
  """(initial state, its shardings): created directly with its shardings. `shardings` from an
  earlier `state_layout` saves tracing the layout again."""
  if shardings is None:
    _, shardings = state_layout(model, tx, clips_shape, mesh=mesh, threshold=threshold)
  return jax.jit(_init_fn(model, tx, clips_shape), out_shardings=shardings)(rng), shardings


def state_from_variables(model, tx, variables, shardings) -> TrainState:
  """A fresh train state holding `variables` (e.g. `models.build.random_variables`), laid out
  by `shardings` (from `state_layout`)."""
  return jax.jit(lambda v: _state_of(model, tx, v), out_shardings=shardings)(variables)


def variables_of(state) -> dict:
  """The model's variables `{'params', 'batch_stats'}` of a train state."""
  return {'params': state.params, 'batch_stats': state.batch_stats}


class RestoredVariables(NamedTuple):
  model: Any
  variables: dict  # {'params', 'batch_stats'}
  step: int


def restore_variables(config, workdir, which: str, mesh) -> RestoredVariables:
  """The model and the variables of the run's 'best' or 'latest' checkpoint, and its step."""
  model, _, tx, clips_shape = model_and_optimizer(config, steps_per_epoch=1)
  abstract, _ = state_layout(model, tx, clips_shape, mesh=mesh,
                             threshold=config.mesh.shard_threshold)
  run_checkpoints = checkpoints.RunCheckpoints(workdir)
  try:
    state, step = run_checkpoints.restore_state(which, abstract, config)
  finally:
    run_checkpoints.close()
  return RestoredVariables(model, variables_of(state), step)
