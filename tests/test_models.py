"""The model zoo: published sizes and costs, every variant trains, sharding changes nothing."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cstm_jax.config.defaults import model_config
from cstm_jax.models.build import abstract_variables, build_model, random_variables
from cstm_jax.models.inception3d import MIXED
from cstm_jax.config.zoo import BACKBONES
from cstm_jax.analysis.summary import count_params, summarize

TINY = {'width': 0.125, 'num_classes': 7}
TINY_SIZE = {'inception_v3': 75}  # the smallest kind of size that keeps v3's branches aligned


def params_of(name, **overrides):
  config = model_config(name, **overrides)
  model = build_model(config)
  crop = BACKBONES[config.backbone].crop
  # TRN's relations depend on the frames (8 by default); no other model's parameters do.
  clips = jax.ShapeDtypeStruct((1, config.num_frames, crop, crop, 3), jnp.float32)
  return count_params(abstract_variables(model, clips))


# --- Published sizes (docs/design.md, "Backbones"; docs/models.md) ---------------------------

def test_parameter_counts_match_the_published_ones():
  tsn = params_of('tsn_bninception')
  assert tsn == pytest.approx(10.43e6, rel=0.01)
  assert params_of('tsn_inception_v3') == pytest.approx(22.12e6, rel=0.01)
  assert params_of('gsm_bninception') - tsn == pytest.approx(51e3, rel=0.03)
  assert params_of('cstm_bninception') - tsn == pytest.approx(0.93e6, rel=0.01)
  assert params_of('tsm_bninception') == tsn  # the shift has no parameters
  # With the 1000-way ImageNet head BN-Inception is the 11.3 M network of the TSN release.
  assert params_of('tsn_bninception', num_classes=1000) == pytest.approx(11.3e6, rel=0.01)
  # 3D references with the 400-way Kinetics head of their releases.
  assert params_of('i3d', num_classes=400) == pytest.approx(12.7e6, rel=0.02)
  assert params_of('s3d', num_classes=400) == pytest.approx(8.3e6, rel=0.02)
  assert params_of('i3d_resnet50', num_classes=400) == pytest.approx(28.0e6, rel=0.01)


def test_the_other_papers_models_have_their_published_sizes():
  """TRN, S3D-G and STM (docs/models.md, "The rest of the comparison table")."""
  tsn = params_of('tsn_bninception')
  # TRN-pytorch's RelationModuleMultiScale at 8 frames: new_fc 1024 -> 256 replaces the
  # 174-way head; per scale s = 8..2 a Linear(256 s, 256) and a Linear(256, 174).
  relations = sum(256 * s * 256 + 256 + 256 * 174 + 174 for s in range(8, 1, -1))
  trn = tsn - (1024 * 174 + 174) + (1024 * 256 + 256) + relations
  assert params_of('trn_bninception') == trn  # 13.14 M (TSM's table lists 18.3 M)
  # S3D-G: s3dg.py's gate is a 1x1x1 conv (C x C, bias) after Conv3d_2c_3x3 and after each
  # branch of every mixed block.
  gated = [192] + [c for c0, _, c1, _, c2, c3 in MIXED.values() for c in (c0, c1, c2, c3)]
  assert params_of('s3dg') - params_of('s3d') == sum(c * c + c for c in gated)
  # STM's paper: 24.0 M parameters for ResNet-50 with STM blocks.
  assert params_of('stm_resnet50') == pytest.approx(24.0e6, rel=0.01)


@pytest.mark.parametrize('name, frames, crop, reference, tolerance', [
    ('tsn_bninception', 8, None, 16.26, 0.03),   # 2.03 G per frame
    ('tsn_bninception', 1, None, 2.03, 0.03),
    ('tsn_inception_v3', 1, None, 3.33, 0.03),
    ('tsn_resnet50', 1, None, 4.09, 0.03),
    ('i3d', 8, None, 13.9, 0.05),
    ('s3d', 8, None, 9.0, 0.05),
    ('r2plus1d_34', 8, None, 38.0, 0.05),
    # PyTorchVideo's 37.5 G for I3D-R50 8x8 is measured on 256 x 256 inputs (28.6 G at 224).
    ('i3d_resnet50', 8, 256, 37.5, 0.10),
    ('trn_bninception', 8, None, 16.37, 0.03),  # TSM's table
    ('s3dg', 64, None, 71.38, 0.03),            # S3D-G's paper, 64 frames
    ('stm_resnet50', 8, None, 33.3, 0.03),      # STM's paper
    ('stm_resnet50', 16, None, 66.5, 0.03),
])
def test_multiply_adds_match_the_published_ones(name, frames, crop, reference, tolerance):
  row = summarize(name, frames, crop=crop)
  assert row['gmacs'] == pytest.approx(reference, rel=tolerance)
  assert row['gmacs_xla'] <= row['gmacs']  # XLA's as-run count skips padded taps


def test_temporal_modules_cost_what_the_design_says():
  tsn = summarize('tsn_bninception')['gmacs']
  assert summarize('gsm_bninception')['gmacs'] - tsn == pytest.approx(0.085, abs=0.015)
  assert summarize('cstm_bninception')['gmacs'] - tsn == pytest.approx(1.35, rel=0.05)


# --- Every variant trains -------------------------------------------------------------------

@functools.partial(jax.jit, static_argnums=0)
def loss_and_grad(model, variables, clips, labels):
  """Loss, gradients and logits of one training forward."""
  def loss_fn(params):
    logits, _ = model.apply({**variables, 'params': params}, clips, train=True,
                            mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables['params'])
  return loss, grads, logits


# TSN, GSM and CSTM on BN-Inception (3D_Shift_sum and GSM+attention are CSTM and GSM with a
# flag: tests/test_temporal_modules.py), CSTM on Inception v3, TSM on ResNet-50, and each 3D
# family once (S3D is I3D with separable convs, R(2+1)D-34 is R(2+1)D-18 deeper).
TRAINED = ['tsn_bninception', 'gsm_bninception', 'cstm_bninception', 'cstm_inception_v3',
           'tsm_resnet50', 'i3d', 'i3d_resnet50', 'r2plus1d_18', 'trn_bninception', 's3dg',
           'stm_resnet50']
# Where each model keeps its learned temporal parameters (STM's two parts are its own).
TEMPORAL_KEYS = ('temporal', 'channel_temporal', 'motion')


@pytest.mark.parametrize('name', TRAINED)
def test_every_model_trains_with_finite_gradients(name):
  config = model_config(name, dropout=0.0, **TINY)
  size = TINY_SIZE.get(config.backbone, 32)
  clips = jax.random.normal(jax.random.key(1), (2, 4, size, size, 3))
  # Each clip also plays backwards in the same batch (same frames, so the same BN statistics).
  clips = jnp.concatenate([clips, clips[:, ::-1]])
  labels = jnp.array([0, 3, 0, 3])
  model = build_model(config)
  loss, grads, logits = loss_and_grad(model, random_variables(model, clips), clips, labels)
  assert logits.shape == (4, TINY['num_classes']) and logits.dtype == jnp.float32
  assert np.isfinite(float(loss))
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(bool(jnp.isfinite(g).all()) for _, g in leaves)
  classifier = grads['trn'] if config.consensus == 'trn_multiscale' else grads['head']
  assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree_util.tree_leaves(classifier))
  is_temporal = lambda path: any(getattr(k, 'key', None) in TEMPORAL_KEYS for k in path)
  temporal = [g for path, g in leaves if is_temporal(path)]
  if config.temporal in ('tsn', 'tsm', 'none'):
    assert not temporal  # no learned temporal parameters
  else:
    assert temporal and all(float(jnp.abs(g).sum()) > 0 for g in temporal)
  # Time order: TSN's average consensus cannot see it; a shift, a gate, a 3D conv or TRN's
  # ordered relations can.
  forward, backward = logits[:2], logits[2:]
  if config.temporal == 'tsn' and config.consensus == 'average':
    np.testing.assert_allclose(forward, backward, rtol=1e-4, atol=1e-5)
  else:
    assert not np.allclose(forward, backward, rtol=1e-4, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  model = build_model(model_config('cstm_bninception', dtype='bfloat16', **TINY))
  clips = jax.random.normal(jax.random.key(1), (2, 4, 32, 32, 3))
  initial = jax.eval_shape(model.init, jax.random.key(0), clips)
  assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(initial)} == {jnp.dtype('float32')}
  logits, captured = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(
      random_variables(model, clips), clips)
  assert logits.dtype == jnp.float32 and bool(jnp.isfinite(logits).all())
  conv_out = captured['intermediates']['backbone']['conv1_7x7_s2']['conv']['__call__'][0]
  assert conv_out.dtype == jnp.bfloat16



def _bfloat16_reductions(jaxpr) -> list:
  """The reduce_sum equations over bfloat16 operands in `jaxpr` and the jaxprs inside it."""
  found = []
  for eqn in jaxpr.eqns:
    for param in eqn.params.values():
      inner = getattr(param, 'jaxpr', param)
      if hasattr(inner, 'eqns'):
        found += _bfloat16_reductions(inner)
    if eqn.primitive.name == 'reduce_sum' and eqn.invars[0].aval.dtype == jnp.bfloat16:
      found.append(eqn)
  return found


@pytest.mark.parametrize('name', ['tsn_bninception', 'cstm_bninception'])
def test_a_bfloat16_train_step_sums_in_float32_except_the_conv_bias_gradients(name):
  """Under model.dtype=bfloat16 the sums over many values (BatchNorm statistics, the attention's
  squeeze and its gradient, the pool, the loss) run in float32. Left in bfloat16: the
  gradients of the conv biases, which sit before a BatchNorm and have a true gradient of zero."""
  model = build_model(model_config(name, dtype='bfloat16', num_frames=2, **TINY))
  clips, labels = jnp.zeros((2, 2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), clips))

  def loss(params, batch_stats):
    logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, clips, train=True,
                            mutable=['batch_stats'], rngs={'dropout': jax.random.key(0)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grad = jax.make_jaxpr(jax.grad(loss))(variables['params'], variables['batch_stats'])
  conv_biases = [path for path, _ in jax.tree_util.tree_leaves_with_path(variables['params'])
                 if jax.tree_util.keystr(path).endswith("['conv']['bias']")]
  reductions = _bfloat16_reductions(grad.jaxpr)
  assert len(reductions) == len(conv_biases) > 0
  # Each sums a conv output [B, H, W, C] down to C values: a bias gradient.
  assert all(np.prod(e.outvars[0].aval.shape) == e.invars[0].aval.shape[-1] for e in reductions)

# --- Sharding -------------------------------------------------------------------------------

def test_sharded_forward_equals_unsharded():
  """Batch over 8 CPU devices: same logits and the same (global) BatchNorm statistics."""
  assert jax.device_count() == 8
  model = build_model(model_config('cstm_bninception', **TINY))
  clips = jax.random.normal(jax.random.key(1), (8, 2, 32, 32, 3))
  variables = random_variables(model, clips)
  train_forward = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'],
                                           rngs={'dropout': jax.random.key(2)})
  expected_logits, expected_stats = jax.jit(train_forward)(variables, clips)

  mesh = Mesh(np.array(jax.devices()), ('data',))
  data, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  sharded = jax.jit(train_forward, in_shardings=(replicated, data),
                    out_shardings=(data, replicated))
  logits, stats = sharded(jax.device_put(variables, replicated), jax.device_put(clips, data))
  assert len(logits.sharding.device_set) == 8
  # Sums in another order, through a deep net in train mode: equal up to 1e-4 of the logits' scale.
  scale = float(np.abs(expected_logits).max())
  np.testing.assert_allclose(logits, expected_logits, rtol=1e-4, atol=1e-4 * scale)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                         stats, expected_stats)


# --- Configuration errors -------------------------------------------------------------------

def test_bad_model_configs_are_refused():
  tsn = model_config('tsn_bninception').to_dict()
  with pytest.raises(ValueError, match=r"unknown keys \['widht'\], missing keys \[\]"):
    build_model({**tsn, 'widht': 0.5})
  with pytest.raises(ValueError, match=r"unknown keys \[\], missing keys \['width'\]"):
    build_model({k: v for k, v in tsn.items() if k != 'width'})
  with pytest.raises(ValueError, match='unknown backbone'):
    build_model({**tsn, 'backbone': 'vgg16'})
  with pytest.raises(ValueError, match="unknown consensus 'max'"):
    build_model({**tsn, 'consensus': 'max'})
  with pytest.raises(ValueError, match="'trn_multiscale' .* not temporal 'cstm'"):
    build_model({**tsn, 'temporal': 'cstm', 'consensus': 'trn_multiscale'})
  # A run's config.json from before `consensus` existed still builds its model.
  older = {k: v for k, v in tsn.items() if k not in ('consensus', 'trn_feature_dim')}
  assert repr(build_model(older)) == repr(build_model(tsn))  # the same module, settings and all
  with pytest.raises(ValueError, match="does not fit backbone 'i3d'"):
    build_model({**tsn, 'backbone': 'i3d', 'temporal': 'cstm'})
  with pytest.raises(ValueError, match="does not fit backbone 'resnet50'"):
    build_model({**tsn, 'backbone': 'resnet50', 'temporal': 'gsm'})
  with pytest.raises(ValueError, match='unknown models'):
    model_config('cstm_vgg')
  with pytest.raises(ValueError, match=r"unknown model config keys \['frames'\]"):
    model_config('cstm_bninception', frames=8)


def test_inception_v3_names_a_broken_input_size():
  model = build_model(model_config('tsn_inception_v3', **TINY))
  with pytest.raises(ValueError, match='use the native crop'):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 1, 224, 224, 3),
                                                                       jnp.float32))
