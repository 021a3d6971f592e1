"""Optimizer and learning-rate schedule of the GSM recipe (docs/design.md, "Recipe"), and TSM's
variant. Functions take the `config.optim` block (keys and defaults: cstm_jax/config/defaults.py).

GSM recipe: SGD with momentum 0.9, weight decay added to the gradient (coupled, as PyTorch's
SGD does), global-norm clipping at 20 before the decay, lr 0.01 per 32 clips scaled linearly
with the global batch, linear warmup from 0.1x then cosine to zero.
TSM's parameter groups: conv / dense weights decay at lr x1; biases lr x2 without decay;
BatchNorm without decay; the new head x5 (weights) and x10 (bias); steps at 20 and 40 epochs.
"""
import flax
import jax
import jax.numpy as jnp
import optax

from cstm_foundation.errors import ConfigError

VALID_SCHEDULES = ('cosine', 'steps')
VALID_OPTIMIZERS = ('sgd', 'adamw')
VALID_GROUPS = ('uniform', 'tsm')


def learning_rate_schedule(config, global_batch: int, steps_per_epoch: int) -> optax.Schedule:
  """`config` is `config.optim`; the schedule counts optimizer steps."""
  peak = config.base_lr * global_batch / config.base_batch
  total = max(1, int(config.epochs * steps_per_epoch))
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(1, total - warmup))
  elif config.schedule == 'steps':
    boundaries = {int(e * steps_per_epoch) - warmup: 0.1 for e in config.decay_epochs}
    main = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise ConfigError(f'optim.schedule {config.schedule!r} not in {VALID_SCHEDULES}')
  if not warmup:
    return main
  ramp = optax.linear_schedule(peak * config.warmup_start, peak, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def _base_optimizer(learning_rate, config, weight_decay: float) -> optax.GradientTransformation:
  """SGD with momentum and coupled decay; or AdamW (decoupled decay) with optimizer='adamw',
  which trains the from-scratch demo far faster than SGD."""
  if config.optimizer == 'adamw':
    return optax.adamw(learning_rate, b1=config.momentum, weight_decay=weight_decay)
  if config.optimizer != 'sgd':
    raise ConfigError(f'optim.optimizer {config.optimizer!r} not in {VALID_OPTIMIZERS}')
  parts = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  parts += [optax.trace(decay=config.momentum, nesterov=False),
            optax.scale_by_learning_rate(learning_rate)]
  return optax.chain(*parts)


def param_group(path: tuple[str, ...], leaf_ndim: int) -> str:
  """TSM group of a parameter from its path: head_weight, head_bias, bn, bias or weight."""
  name, module = path[-1], path[-2] if len(path) > 1 else ''
  if path[0] == 'head':
    return 'head_bias' if name == 'bias' else 'head_weight'
  if name == 'scale' or module.startswith(('bn', 'BatchNorm')):
    return 'bn'
  if name == 'bias' or leaf_ndim == 1:
    return 'bias'
  return 'weight'


def make_optimizer(config, schedule: optax.Schedule, params) -> optax.GradientTransformation:
  """`config` is `config.optim`. Returns clip -> (grouped) SGD or AdamW, wrapped for
  accumulation."""
  if config.param_groups == 'uniform':
    base = _base_optimizer(schedule, config, config.weight_decay)
  elif config.param_groups == 'tsm':
    scaled = lambda k: (lambda step: k * schedule(step))
    groups = {
        'weight': _base_optimizer(schedule, config, config.weight_decay),
        'bias': _base_optimizer(scaled(2.0), config, 0.0),
        'bn': _base_optimizer(schedule, config, 0.0),
        'head_weight': _base_optimizer(scaled(config.head_lr_mult), config, config.weight_decay),
        'head_bias': _base_optimizer(scaled(config.head_bias_lr_mult), config, 0.0),
    }
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
    labels = flax.traverse_util.unflatten_dict(
        {path: param_group(path, jnp.ndim(leaf)) for path, leaf in flat.items()})
    base = optax.multi_transform(groups, labels)
  else:
    raise ConfigError(f'optim.param_groups {config.param_groups!r} not in {VALID_GROUPS}')
  tx = optax.chain(clip_by_global_norm(config.clip_norm), base) if config.clip_norm else base
  if config.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.grad_accum_steps)
  return tx


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves together, as one reduction over their concatenation: XLA fuses
  it into a few kernels, where a norm per leaf costs a kernel per parameter array."""
  leaves = [jnp.ravel(leaf).astype(jnp.float32) for leaf in jax.tree_util.tree_leaves(tree)]
  return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm with `global_norm`: updates scaled by max_norm / norm when the
  norm exceeds max_norm."""

  def update(updates, state, params=None):
    del params
    norm = global_norm(updates)
    clip = lambda u: jnp.where(norm < max_norm, u, (u / norm.astype(u.dtype)) * max_norm)
    return jax.tree_util.tree_map(clip, updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def current_learning_rate(schedule, step, grad_accum_steps: int = 1) -> jax.Array:
  return schedule(step // grad_accum_steps)
