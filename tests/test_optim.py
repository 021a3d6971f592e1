"""The recipe's optimizer and schedule, TSM's parameter groups, parameter sharding rules."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from configs import ssv2_8f
from cstm_jax.train import optim
from cstm_jax.distributed import sharding


def optim_config(**overrides):
  """The experiment's optimizer settings, one batch a step unless `overrides` say otherwise."""
  config = ml_collections.ConfigDict(ssv2_8f.get_config().optim.to_dict())
  config.update({'grad_accum_steps': 1, **overrides})
  return config


def test_schedule_warms_up_from_a_tenth_then_decays_to_its_floor_changing_once_an_epoch():
  config = optim_config(epochs=10.0, warmup_epochs=2.0)
  schedule = optim.learning_rate_schedule(config, step_batch=64, steps_per_epoch=100)
  peak = 0.01 * 64 / 32  # scaled with the clips of an optimizer step
  assert schedule(0) == schedule(99) == pytest.approx(0.1 * peak)
  assert schedule(100) == pytest.approx(0.55 * peak)
  assert schedule(200) == pytest.approx(peak)
  assert schedule(600) == schedule(699) == pytest.approx(peak / 2, rel=1e-3)  # cosine midpoint
  assert schedule(1000) == pytest.approx(1e-7 * peak, abs=1e-12)  # GSM's min_ratio
  per_step = optim.learning_rate_schedule(optim_config(epochs=10.0, warmup_epochs=2.0,
                                                       lr_every='step'), 64, 100)
  assert per_step(50) == pytest.approx(0.1 * peak + 0.9 * peak * 50 / 200)
  steps = optim.learning_rate_schedule(optim_config(schedule='steps', warmup_epochs=0.0,
                                                    decay_epochs=(2, 4)), 32, 100)
  assert [float(steps(s)) for s in (0, 199, 201, 401)] == pytest.approx([0.01, 0.01, 1e-3, 1e-4])


PARAMS = {
    'backbone': {'conv1': {'conv': {'kernel': jnp.ones((3, 3, 2, 4)), 'bias': jnp.ones(4)},
                           'bn': {'scale': jnp.ones(4), 'bias': jnp.ones(4)}}},
    'head': {'kernel': jnp.ones((4, 5)), 'bias': jnp.ones(5)},
}


def one_update(config):
  schedule = optax.constant_schedule(0.1)
  tx = optim.make_optimizer(config, schedule, PARAMS)
  grads = jax.tree_util.tree_map(jnp.ones_like, PARAMS)
  updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
  return jax.tree_util.tree_map(lambda u: float(u.ravel()[0]), updates)


def test_coupled_weight_decay_and_tsm_groups():
  wd = 5e-4
  uniform = one_update(optim_config(weight_decay=wd, clip_norm=0.0))
  assert uniform['head']['bias'] == pytest.approx(-0.1 * (1 + wd))  # decay added to the gradient
  tsm = one_update(optim_config(weight_decay=wd, clip_norm=0.0, param_groups='tsm'))
  conv, bn = tsm['backbone']['conv1']['conv'], tsm['backbone']['conv1']['bn']
  assert conv['kernel'] == pytest.approx(-0.1 * (1 + wd))
  assert conv['bias'] == pytest.approx(-0.2)          # x2, no decay
  assert bn['scale'] == bn['bias'] == pytest.approx(-0.1)  # no decay
  assert tsm['head']['kernel'] == pytest.approx(-0.5 * (1 + wd))
  assert tsm['head']['bias'] == pytest.approx(-1.0)


def test_gradient_clipping_and_accumulation():
  clipped = one_update(optim_config(weight_decay=0.0, clip_norm=1.0))
  norm = np.sqrt(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(PARAMS)))
  assert clipped['head']['bias'] == pytest.approx(-0.1 / norm, rel=1e-5)
  accumulated = one_update(optim_config(weight_decay=0.0, clip_norm=0.0, grad_accum_steps=2))
  assert accumulated['head']['bias'] == 0.0  # the first micro-step only accumulates


def test_accumulated_gradients_are_clipped_as_gsm_clips_them():
  # GSM's loop (--iter_size 2): loss / 2, backward, clip the summed gradient, and step after
  # the second. The first gradient alone exceeds the norm: clipped before the second is added.
  config = optim_config(weight_decay=0.0, momentum=0.0, clip_norm=20.0, grad_accum_steps=2)
  params = {'w': jnp.zeros(3)}
  tx = optim.make_optimizer(config, optax.constant_schedule(1.0), params)
  state = tx.init(params)
  first, state = tx.update({'w': jnp.array([60.0, 0.0, 0.0])}, state, params)
  second, state = tx.update({'w': jnp.array([0.0, 40.0, 0.0])}, state, params)
  assert np.all(np.asarray(first['w']) == 0)  # the first batch only accumulates
  total = np.array([20.0, 20.0, 0.0])  # clip([30, 0, 0]) + [0, 20, 0]
  np.testing.assert_allclose(second['w'], -total * 20 / np.linalg.norm(total), rtol=1e-6)
  third, state = tx.update({'w': jnp.array([2.0, 0.0, 0.0])}, state, params)
  fourth, _ = tx.update({'w': jnp.array([0.0, 2.0, 0.0])}, state, params)
  assert np.all(np.asarray(third['w']) == 0)  # the total starts again from zero
  np.testing.assert_allclose(fourth['w'], [-1.0, -1.0, 0.0], rtol=1e-6)


def test_an_epoch_counts_optimizer_steps_of_the_accumulated_batches():
  from cstm_jax.train import program
  config = ssv2_8f.get_config()
  assert (config.data.batch_size, config.optim.grad_accum_steps) == (16, 2)  # GSM's command
  assert program.optimizer_steps_per_epoch(config, 1000) == 31  # 62 batches of 16
  config.optim.grad_accum_steps = 1
  assert program.optimizer_steps_per_epoch(config, 1000) == 62
  assert program.optimizer_steps_per_epoch(config, 10) == 1


def test_large_parameters_shard_over_the_model_axis():
  assert sharding.leaf_spec((3, 3, 64, 256), model_axis=1, threshold=0) == P()
  assert sharding.leaf_spec((3, 3, 64, 256), model_axis=2, threshold=10 ** 6) == P()
  assert sharding.leaf_spec((3, 3, 64, 256), model_axis=2, threshold=0) == P(
      None, None, None, 'model')
  assert sharding.leaf_spec((1024, 174), model_axis=4, threshold=0) == P('model')
  assert sharding.leaf_spec((7, 7), model_axis=2, threshold=0) == P()


def test_bad_optimizer_settings_are_refused():
  with pytest.raises(ValueError, match='optim.param_groups'):
    optim.make_optimizer(optim_config(param_groups='lars'), optax.constant_schedule(0.1), PARAMS)
  with pytest.raises(ValueError, match='optim.schedule'):
    optim.learning_rate_schedule(optim_config(schedule='linear'), 32, 10)


def test_clipping_by_the_fused_global_norm_matches_optax():
  rng = np.random.default_rng(0)
  grads = {'a': jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
           'b': {'c': jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)}}
  squares = sum(np.sum(np.asarray(g, np.float64) ** 2) for g in jax.tree_util.tree_leaves(grads))
  np.testing.assert_allclose(optim.global_norm(grads), np.sqrt(squares), rtol=1e-6)
  for max_norm in (0.5, 100.0):  # clipped, and left alone
    ours, _ = optim.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    theirs, _ = optax.clip_by_global_norm(max_norm).update(grads, optax.EmptyState())
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
      assert a.dtype == b.dtype
      np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=1e-2)
