"""The training program: `build(config, mesh)` makes everything a command runs from one finished
config, reading each key once: the model, its learning-rate schedule and optimizer, the train
state's layout over the mesh, and the jitted train, eval and forward steps.

Training, evaluation, prediction, the compile report (`analysis/aot.py`), the benchmark and the
GPU tools all call it, so each compiles the step the experiment runs, optimizer included.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cstm_foundation.errors import ConfigError
from cstm_jax.config import finish, zoo
from cstm_jax.distributed import sharding
from cstm_jax.models.build import abstract_variables, build_model, frozen_parameters
from cstm_jax.train import optim, steps
from cstm_jax.train.train_state import TrainState

# The schedule's epoch length where no dataset sets it (compile reports, benchmarks, restoring
# a checkpoint's variables): it changes constants of the step, not its cost or its shapes.
NO_DATASET_STEPS_PER_EPOCH = 1000


@dataclasses.dataclass(frozen=True)
class Program:
  """What `build` makes. The steps are jitted (`steps.MeshStep`, bound to `mesh`) but compiled
  only when first called or lowered."""
  config: ml_collections.ConfigDict  # the finished config it was built from
  mesh: jax.sharding.Mesh
  model: Any  # the Flax module (`models.build.build_model`)
  schedule: Any  # optimizer step -> learning rate
  tx: Any  # the optax optimizer of `config.optim`
  clips_shape: tuple  # a global training batch of clips, [N, T, H, W, 3]
  input_norm: str  # the backbone's input convention (`models.video.normalise`)
  abstract_state: Any  # the TrainState's shapes and dtypes, each leaf with its sharding
  state_shardings: Any  # the TrainState's shardings
  train_step: steps.MeshStep  # (state, batch, rng) -> (state, metrics); donates the state
  eval_step: steps.MeshStep  # (variables, batch of views) -> (logits, features)
  forward: steps.MeshStep  # (variables, clips) -> logits, as a serving loop runs it

  def one_clip(self) -> jax.ShapeDtypeStruct:
    return _one_clip(self.clips_shape)

  def init_state(self, rng) -> TrainState:
    """The initial train state, created directly with its shardings."""
    model, tx, clip = self.model, self.tx, self.one_clip()
    init = lambda key: _state_of(model, tx, model.init({'params': key},
                                                       jnp.zeros(clip.shape, clip.dtype)))
    return jax.jit(init, out_shardings=self.state_shardings)(rng)

  def state_with(self, variables: dict) -> TrainState:
    """A fresh train state holding `variables` (`{'params', 'batch_stats'}`, e.g.
    `models.build.random_variables` or ImageNet weights), laid out by the state's shardings."""
    return jax.jit(lambda v: _state_of(self.model, self.tx, v),
                   out_shardings=self.state_shardings)(variables)


def _one_clip(clips_shape) -> jax.ShapeDtypeStruct:
  """One float32 clip: enough to initialise, since no variable's shape depends on the batch."""
  return jax.ShapeDtypeStruct((1, *clips_shape[1:]), jnp.float32)


def _state_of(model, tx, variables) -> TrainState:
  # The step counter as a checkpoint restores it (int32, not weakly typed): a fresh and a
  # resumed run then trace the same train step, and a restart finds it in the compile cache.
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables['batch_stats']).replace(
                               step=jnp.zeros((), jnp.int32))


def make_mesh(config: ml_collections.ConfigDict, devices=None) -> jax.sharding.Mesh:
  """The run's mesh over `devices` (default: all) with `config.mesh.model` devices on the model
  axis, after checking that both batch sizes split over its data axis."""
  mesh = sharding.make_mesh(config.mesh.model, devices)
  sharding.check_batch(config.data.batch_size, mesh)
  sharding.check_batch(config.data.eval_batch_size, mesh, 'evaluation batch',
                       key='data.eval_batch_size')
  return mesh


def optimizer_steps_per_epoch(config: ml_collections.ConfigDict, train_size: int) -> int:
  """Optimizer steps in one pass over `train_size` clips: each takes `optim.grad_accum_steps`
  train steps of `data.batch_size` clips (at least 1)."""
  batches = train_size // config.data.batch_size
  return max(1, batches // config.optim.grad_accum_steps)


def statistic_groups(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> int:
  """The groups of clips a training BatchNorm normalises apart in a batch of
  `data.batch_size` (`train.bn_group`): 1 for 'batch' (the whole batch, SyncBN); one per device
  on the mesh's data axis for 'device' (PyTorch's nn.DataParallel); batch / N for 'N' (N clips
  each, whatever the device count)."""
  group, clips = config.train.bn_group, config.data.batch_size
  if group == 'batch':
    return 1
  if group == 'device':
    return mesh.shape['data']
  if not group.isdigit() or int(group) < 1 or clips % int(group):
    raise ConfigError(f"train.bn_group={group!r}: expected 'batch', 'device' or a number of "
                      f'clips that divides data.batch_size {clips}')
  return clips // int(group)


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
          steps_per_epoch: int = NO_DATASET_STEPS_PER_EPOCH) -> Program:
  """The program of `config` (finished: `config.finish`) on `mesh`; `steps_per_epoch` (the
  optimizer steps in an epoch of the training split, `optimizer_steps_per_epoch`) sets the
  schedule's length."""
  finish.require(config)
  model = build_model(config.model)
  input_norm = zoo.BACKBONES[config.model.backbone].input_norm
  data = config.data
  clips_shape = (data.batch_size, data.num_frames, data.crop, data.crop, 3)
  schedule = optim.learning_rate_schedule(
      config.optim, data.batch_size * config.optim.grad_accum_steps, steps_per_epoch)
  variables = abstract_variables(model, _one_clip(clips_shape))
  params = variables['params']
  tx = optim.make_optimizer(config.optim, schedule, params,
                            frozen=frozen_parameters(config.model, params))

  abstract = jax.eval_shape(lambda v: _state_of(model, tx, v), variables)
  state_shardings = sharding.state_shardings(abstract, mesh, config.mesh.shard_threshold)
  abstract_state = jax.tree_util.tree_map(
      lambda leaf, s: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=s),
      abstract, state_shardings)

  nhwc = config.xla.gpu_conv_nhwc
  train_step = steps.jit_train_step(
      steps.make_train_step(model, schedule, input_norm, config.optim.grad_accum_steps,
                            statistic_groups(config, mesh)),
      state_shardings, mesh, nhwc)
  return Program(config=config, mesh=mesh, model=model, schedule=schedule, tx=tx,
                 clips_shape=clips_shape, input_norm=input_norm, abstract_state=abstract_state,
                 state_shardings=state_shardings, train_step=train_step,
                 eval_step=steps.jit_eval_step(model, mesh, input_norm, nhwc),
                 forward=steps.jit_forward(model, mesh, input_norm, nhwc))
