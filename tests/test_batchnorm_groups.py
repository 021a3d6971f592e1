"""BatchNorm over a chosen group of clips (`train.bn_group`): a batch sharded over 8 devices in
groups of N clips trains exactly as the same batch normalised in groups of N on one device, each
group's statistics are those of its clips alone, and partial BatchNorm's frozen statistics stay
frozen."""
import flax
import jax
import numpy as np
import pytest

from cstm_jax.config import defaults, finish
from cstm_jax.distributed import sharding
from cstm_jax.models import layers
from cstm_jax.models.build import build_model
from cstm_jax.train import program as program_lib

BATCH, FRAMES, CROP, CLASSES = 32, 2, 64, 5


def config_of(bn_group: str, model: str = 'tsn_bninception', recipe: str = 'gsm'):
  config = defaults.experiment('ssv2', model, FRAMES, recipe=recipe)
  config.model.update(width=0.125, num_classes=CLASSES, dropout=0.0, dtype='float32')
  config.data.update(crop=CROP, batch_size=BATCH, eval_batch_size=BATCH)
  config.optim.grad_accum_steps = 1
  config.train.bn_group = bn_group
  return finish.without_data(config)


def batch():
  rng = np.random.default_rng(0)
  return {'clips': rng.integers(0, 256, (BATCH, FRAMES, CROP, CROP, 3), np.uint8),
          'labels': rng.integers(0, CLASSES, BATCH).astype(np.int32)}


def trained(config, devices: int):
  """(the state after one step, its metrics) on a mesh of `devices`, from the same start."""
  mesh = sharding.make_mesh(1, jax.devices()[:devices])
  program = program_lib.build(config, mesh, steps_per_epoch=10)
  start = jax.device_get(program_lib.build(config, sharding.make_mesh(1, jax.devices()[:1]))
                         .init_state(jax.random.key(0)))
  state = program.state_with({'params': start.params, 'batch_stats': start.batch_stats})
  state, metrics = program.train_step(state, sharding.global_batch(batch(), mesh),
                                      jax.random.key(1))
  return jax.device_get(state), jax.device_get(metrics)


def leaves(state) -> dict:
  return {f'{c}/{k}': np.asarray(v) for c, tree in (('params', state.params),
                                                    ('batch_stats', state.batch_stats))
          for k, v in flax.traverse_util.flatten_dict(tree, sep='/').items()}


def assert_same(a, b, tolerance=2e-5):
  a, b = leaves(a), leaves(b)
  for key in a:
    scale = max(np.abs(b[key]).max(), 1e-6)
    np.testing.assert_allclose(a[key], b[key], rtol=0, atol=tolerance * scale, err_msg=key)


def test_groups_on_8_devices_train_as_the_same_groups_on_one_device():
  assert len(jax.devices()) == 8
  grouped = config_of('4')  # 8 groups of 4 clips
  on_eight, metrics8 = trained(grouped, 8)
  on_one, metrics1 = trained(grouped, 1)
  assert program_lib.statistic_groups(grouped, sharding.make_mesh(1)) == 8
  np.testing.assert_allclose(metrics8['loss'], metrics1['loss'], rtol=1e-5)
  np.testing.assert_allclose(metrics8['grad_norm'], metrics1['grad_norm'], rtol=1e-4)
  assert_same(on_eight, on_one)
  # 'device' on 8 devices is the same grouping: each device's share of 4 clips.
  per_device, _ = trained(config_of('device'), 8)
  assert_same(per_device, on_eight)
  # The whole batch (SyncBN) trains otherwise: the groups are not a no-op.
  synced, metrics = trained(config_of('batch'), 8)
  assert abs(float(metrics['loss']) - float(metrics8['loss'])) > 1e-4
  with pytest.raises(AssertionError):
    assert_same(synced, on_eight)


def test_each_groups_statistics_are_its_clips_alone():
  """Normalised in 4 groups, the logits of each group are those of its clips normalised alone,
  and the running statistics move by the mean of the groups' own updates."""
  model = build_model(config_of('4').model)
  clips = np.random.default_rng(1).normal(size=(BATCH, FRAMES, CROP, CROP, 3)).astype(np.float32)
  variables = model.init(jax.random.key(0), clips[:1])
  apply = jax.jit(lambda x: model.apply(variables, x, train=True, mutable=['batch_stats']))
  grouped = jax.jit(lambda x: _grouped(model, variables, x, BATCH // 4))
  logits, updates = grouped(clips)
  alone = [apply(clips[i:i + 4]) for i in range(0, BATCH, 4)]
  np.testing.assert_allclose(logits, np.concatenate([l for l, _ in alone]), rtol=0, atol=1e-5)
  stats = flax.traverse_util.flatten_dict(updates['batch_stats'])
  separate = [flax.traverse_util.flatten_dict(u['batch_stats']) for _, u in alone]
  for key, value in stats.items():
    np.testing.assert_allclose(value, np.mean([s[key] for s in separate], 0), rtol=1e-4,
                               atol=1e-6)


def _grouped(model, variables, clips, groups):
  with layers.statistic_groups(groups):
    return model.apply(variables, clips, train=True, mutable=['batch_stats'])


def test_partial_batchnorm_keeps_its_frozen_statistics_in_groups():
  config = config_of('4', 'trn_bninception', recipe='trn')
  assert config.model.partial_bn
  state, _ = trained(config, 8)
  start, _ = trained(config_of('4', 'trn_bninception', recipe='trn'), 1)
  stats = leaves(state)
  frozen = [k for k in stats if k.startswith('batch_stats/') and '/conv1_7x7_s2/' not in k]
  moved = [k for k in stats if k.startswith('batch_stats/') and '/conv1_7x7_s2/' in k]
  initial = {'mean': 0.0, 'var': 1.0}
  assert frozen and moved
  for key in frozen:
    np.testing.assert_array_equal(stats[key], initial[key.rsplit('/', 1)[1]])
  assert not np.allclose(stats[moved[0]], initial[moved[0].rsplit('/', 1)[1]])
  assert_same(state, start)


def test_a_group_that_does_not_divide_the_batch_is_refused():
  with pytest.raises(Exception, match=r"train.bn_group='3': expected 'batch', 'device' or a "
                     r'number of clips that divides data.batch_size 32'):
    program_lib.statistic_groups(config_of('3'), sharding.make_mesh(1))


def test_each_recipe_names_its_group():
  """GSM: the whole batch of 16 (its README states no GPU count: one GPU chosen); TSM: 8 clips
  (no GPU count stated: 8 GPUs of 8 chosen); TRN: 32 (README: 2 GPUs, batch 64)."""
  groups = {recipe: defaults.experiment('ssv2', 'tsn_bninception', 8, recipe=recipe)
            .train.bn_group for recipe in ('gsm', 'tsm', 'trn', 'stm')}
  assert groups == {'gsm': 'batch', 'tsm': '8', 'trn': '32', 'stm': 'batch'}
