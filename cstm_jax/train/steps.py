"""The jitted steps: training, evaluation and the plain forward, each bound to its mesh.

The builders here are the only way the package makes a jitted step over a mesh (export traces
its serving function for one device, without one). Each returns a `MeshStep`, which sets the
mesh whenever the step is called, lowered or traced: the temporal ops read it
to run CSTM's grouped 3D convolution on each device's share of the batch
(`temporal.ops.per_batch_shard`). Traced without a mesh, XLA's partitioner would gather the
whole batch onto every device for that convolution.
"""
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from cstm_jax.train import optim
from cstm_jax.distributed import sharding
from cstm_jax.models import layers
from cstm_jax.models.video import normalise


class MeshStep:
  """A jitted function that runs, lowers and traces with `mesh` set."""

  def __init__(self, jitted, mesh: jax.sharding.Mesh):
    self.jitted, self.mesh = jitted, mesh

  def __call__(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted(*args)

  def lower(self, *args):
    with jax.set_mesh(self.mesh):
      return self.jitted.lower(*args)


def make_train_step(model, schedule, input_norm: str, grad_accum_steps: int = 1,
                    bn_groups: int = 1):
  """(state, batch, rng) -> (state, metrics); the batch's `clips` are uint8 RGB, normalised here
  for the backbone (`input_norm`); dropout rng folded in per step. BatchNorm normalises the
  batch in `bn_groups` groups of clips (`program.statistic_groups`)."""

  def step(state, batch, rng):
    dropout_rng = jax.random.fold_in(rng, state.step)
    clips = normalise(batch['clips'], input_norm)

    def loss_fn(params):
      with layers.statistic_groups(bn_groups):
        logits, updates = model.apply(
            {'params': params, 'batch_stats': state.batch_stats}, clips, train=True,
            mutable=['batch_stats'], rngs={'dropout': dropout_rng})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels']).mean()
      return loss, (logits, updates['batch_stats'])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {
        'loss': loss,
        'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['labels']),
        'grad_norm': optim.global_norm(grads),
        'lr': optim.current_learning_rate(schedule, state.step - 1, grad_accum_steps),
    }
    return state, metrics

  return step


def make_eval_step(model, input_norm: str):
  """(variables, batch) -> (logits [B, C] averaged over views, clip features [B, D]); the
  batch's `clips` are uint8 RGB `[B, V, T, H, W, 3]` with V views of each clip."""

  def step(variables, batch):
    clips = normalise(batch['clips'], input_norm)
    size, views = clips.shape[:2]
    logits, state = model.apply(variables, clips.reshape(size * views, *clips.shape[2:]),
                                train=False, mutable=['intermediates'])
    features = state['intermediates']['features'][0]
    return (logits.reshape(size, views, -1).mean(axis=1),
            features.reshape(size, views, -1).mean(axis=1))

  return step


def jit_train_step(step, state_shardings, mesh, gpu_conv_nhwc: bool = False) -> MeshStep:
  """`step` (from `make_train_step`) jitted for `mesh`: the state keeps its shardings and is
  donated, the batch is split over the data axis, the metrics are replicated."""
  replicated = NamedSharding(mesh, P())
  return MeshStep(jax.jit(
      step, in_shardings=(state_shardings, sharding.batch_sharding(mesh), replicated),
      out_shardings=(state_shardings, replicated), donate_argnums=0,
      compiler_options=sharding.compiler_options(mesh, gpu_conv_nhwc)), mesh)


def jit_eval_step(model, mesh, input_norm: str, gpu_conv_nhwc: bool = False) -> MeshStep:
  """`make_eval_step(model, input_norm)` jitted for `mesh` (shardings follow the arguments)."""
  return MeshStep(jax.jit(make_eval_step(model, input_norm),
                          compiler_options=sharding.compiler_options(mesh, gpu_conv_nhwc)), mesh)


def jit_forward(model, mesh, input_norm: str, gpu_conv_nhwc: bool = False) -> MeshStep:
  """(variables, uint8 RGB clips `[B, T, H, W, 3]`) -> logits `[B, C]` in eval mode, variables
  replicated and the batch (and logits) split over the data axis, as a serving loop runs it."""
  return MeshStep(jax.jit(
      lambda variables, clips: model.apply(variables, normalise(clips, input_norm), train=False),
      in_shardings=(NamedSharding(mesh, P()), sharding.batch_sharding(mesh)),
      out_shardings=sharding.batch_sharding(mesh),
      compiler_options=sharding.compiler_options(mesh, gpu_conv_nhwc)), mesh)
