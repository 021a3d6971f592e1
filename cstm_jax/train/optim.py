"""Optimizer and learning-rate schedule of the GSM recipe (docs/design.md, "Recipe"), and TSN's
and TSM's parameter groups. Functions take the `config.optim` block (keys and defaults:
cstm_jax/config/defaults.py).

GSM recipe: SGD with momentum 0.9, weight decay added to the gradient (coupled, as PyTorch's
SGD does), global-norm clipping at 20 before the decay, lr 0.01 per 32 clips scaled linearly
with the clips of an optimizer step (`data.batch_size` x `optim.grad_accum_steps`), linear warmup
from 0.1x then cosine to 1e-7 x, changing once an epoch (`optim.lr_every`); accumulated
gradients clipped as GSM's loop clips them (`accumulate`).
TSN's parameter groups (`get_optim_policies` of tsn-pytorch, TRN-pytorch and TSM's
`ops/models.py`): conv / dense weights decay at lr x1; biases lr x2 without decay; BatchNorm
without decay. TSM's add the new head x5 (weights) and x10 (bias).
"""
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from cstm_foundation.errors import ConfigError

VALID_SCHEDULES = ('cosine', 'steps')
VALID_OPTIMIZERS = ('sgd', 'adamw')
VALID_GROUPS = ('uniform', 'tsn', 'tsm')


def learning_rate_schedule(config, step_batch: int, steps_per_epoch: int) -> optax.Schedule:
  """`config` is `config.optim`; the schedule counts optimizer steps, `steps_per_epoch` of
  them an epoch, each of `step_batch` clips (`data.batch_size` x `grad_accum_steps`).

  With `lr_every='epoch'` the lr of epoch e is the curve's value at the epoch's first step and
  holds for the epoch, as the originals' schedulers step once per epoch: GSM's
  `WarmupCosineLR` (CosineAnnealingLR.py, `lr_scheduler_clr.step()` after each epoch in
  main.py), TSM's and TRN's `adjust_learning_rate(optimizer, epoch, ...)` at each epoch's start.
  """
  peak = config.base_lr * step_batch / config.base_batch
  total = max(1, int(config.epochs * steps_per_epoch))
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.schedule == 'cosine':
    main = optax.cosine_decay_schedule(peak, max(1, total - warmup),
                                       alpha=config.cosine_min_ratio)
  elif config.schedule == 'steps':
    boundaries = {int(e * steps_per_epoch) - warmup: 0.1 for e in config.decay_epochs}
    main = optax.piecewise_constant_schedule(peak, boundaries)
  else:
    raise ConfigError(f'optim.schedule {config.schedule!r} not in {VALID_SCHEDULES}')
  curve = main
  if warmup:
    ramp = optax.linear_schedule(peak * config.warmup_start, peak, warmup)
    curve = optax.join_schedules([ramp, main], [warmup])
  if config.lr_every == 'step':
    return curve
  if config.lr_every != 'epoch':
    raise ConfigError(f"optim.lr_every {config.lr_every!r} not in ('epoch', 'step')")
  return lambda step: curve(step // steps_per_epoch * steps_per_epoch)


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


def make_optimizer(config, schedule: optax.Schedule, params,
                   frozen=None) -> optax.GradientTransformation:
  """`config` is `config.optim`. Returns clip -> (grouped) SGD or AdamW, wrapped for
  accumulation. `frozen` (a tree of booleans like `params`, `models.build.frozen_parameters`):
  parameters left as they are, as PyTorch leaves those without `requires_grad`: their gradients
  count neither in the clipping norm nor in an update."""
  if config.param_groups not in VALID_GROUPS:
    raise ConfigError(f'optim.param_groups {config.param_groups!r} not in {VALID_GROUPS}')
  scaled = lambda k: (lambda step: k * schedule(step))
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params))
  if config.param_groups == 'uniform':
    groups = {'all': _base_optimizer(schedule, config, config.weight_decay)}
    label = {path: 'all' for path in flat}
  else:  # TSN's groups; TSM's add the new head's multipliers
    head = config.param_groups == 'tsm'
    groups = {
        'weight': _base_optimizer(schedule, config, config.weight_decay),
        'bias': _base_optimizer(scaled(2.0), config, 0.0),
        'bn': _base_optimizer(schedule, config, 0.0),
        'head_weight': _base_optimizer(scaled(config.head_lr_mult if head else 1.0), config,
                                       config.weight_decay),
        'head_bias': _base_optimizer(scaled(config.head_bias_lr_mult if head else 2.0), config,
                                     0.0),
    }
    label = {path: param_group(path, jnp.ndim(leaf)) for path, leaf in flat.items()}
  frozen_paths = set()
  if frozen is not None:
    frozen_paths = {path for path, is_frozen in flax.traverse_util.flatten_dict(
        flax.core.unfreeze(frozen)).items() if is_frozen}
  if frozen_paths:
    groups['frozen'] = optax.set_to_zero()
    label.update({path: 'frozen' for path in frozen_paths})
  base = (groups['all'] if set(label.values()) == {'all'} else
          optax.multi_transform(groups, flax.traverse_util.unflatten_dict(label)))
  parts = []
  if frozen_paths:
    parts.append(optax.masked(optax.set_to_zero(), flax.traverse_util.unflatten_dict(
        {path: path in frozen_paths for path in flat})))
  if config.grad_accum_steps > 1:
    parts.append(accumulate(base, config.grad_accum_steps, config.clip_norm))
  else:
    parts += [clip_by_global_norm(config.clip_norm)] if config.clip_norm else []
    parts.append(base)
  return optax.chain(*parts) if len(parts) > 1 else parts[0]


class AccumulateState(NamedTuple):
  micro_step: jax.Array  # micro-batches summed since the last update
  total: Any             # their gradients / every, clipped after each addition
  inner: Any             # the inner optimizer's state


def accumulate(inner: optax.GradientTransformation, every: int,
               clip_norm: float) -> optax.GradientTransformation:
  """Gradient accumulation as GSM's `main.py` does it (`--iter_size`): each micro-batch's
  gradient / `every` is added to a running total, which is clipped to `clip_norm` after every
  addition (GSM clips inside its loop, after each backward); every `every`-th micro-batch
  `inner` updates with the total, and the updates are zero in between."""
  def init(params):
    return AccumulateState(jnp.zeros([], jnp.int32), jax.tree_util.tree_map(jnp.zeros_like, params),
                           inner.init(params))

  def update(grads, state, params=None):
    total = jax.tree_util.tree_map(lambda t, g: t + g.astype(t.dtype) / every, state.total, grads)
    if clip_norm:
      total = clipped(total, clip_norm)

    def apply(_):
      updates, inner_state = inner.update(total, state.inner, params)
      updates = jax.tree_util.tree_map(lambda u, t: u.astype(t.dtype), updates, total)
      return updates, AccumulateState(jnp.zeros([], jnp.int32),
                                      jax.tree_util.tree_map(jnp.zeros_like, total), inner_state)

    def wait(_):
      return (jax.tree_util.tree_map(jnp.zeros_like, total),
              AccumulateState(state.micro_step + 1, total, state.inner))

    return jax.lax.cond(state.micro_step == every - 1, apply, wait, None)

  return optax.GradientTransformation(init, update)


def global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves together, as one reduction over their concatenation: XLA fuses
  it into a few kernels, where a norm per leaf costs a kernel per parameter array."""
  leaves = [jnp.ravel(leaf).astype(jnp.float32) for leaf in jax.tree_util.tree_leaves(tree)]
  return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def clipped(tree, max_norm: float):
  """`tree` scaled by max_norm / its `global_norm` when that norm exceeds max_norm."""
  norm = global_norm(tree)
  clip = lambda u: jnp.where(norm < max_norm, u, (u / norm.astype(u.dtype)) * max_norm)
  return jax.tree_util.tree_map(clip, tree)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """optax.clip_by_global_norm with `global_norm` (`clipped`)."""
  return optax.stateless(lambda updates, params=None: clipped(updates, max_norm))


def current_learning_rate(schedule, step, grad_accum_steps: int = 1) -> jax.Array:
  return schedule(step // grad_accum_steps)
