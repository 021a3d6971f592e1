"""Models with no PyTorch release to convert, against PyTorch references built from their
published description (tests/torch_reference.py): S3D-G; and TRN's relation sampling."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import torch_reference as ref
from cstm_jax.config.defaults import model_config
from cstm_jax.models.build import build_model, random_variables


def _random_statistics(variables, seed: int = 1):
  """BatchNorm scales, offsets and running statistics drawn at random (random_variables leaves
  them at 1 and 0), and gate biases too, so the comparison sees every one of them."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return (rng.random(leaf.shape) + 0.5).astype(leaf.dtype)
    if name in ('mean', 'bias'):
      return (rng.normal(size=leaf.shape) * 0.1).astype(leaf.dtype)
    return leaf

  return jax.tree_util.tree_map_with_path(draw, variables)


def test_s3dg_equals_its_pytorch_reference():
  config = model_config('s3dg', width=0.25, num_classes=5, num_frames=8)
  model = build_model(config)
  clips = np.random.default_rng(0).normal(size=(2, 8, 64, 64, 3)).astype(np.float32)
  variables = _random_statistics(random_variables(model, clips))
  flax_features = jax.jit(lambda v, x: model.apply(
      v, x, mutable=['intermediates'])[1]['intermediates']['features'][0])(variables, clips)
  torch_model = ref.S3DG(width=0.25).eval()
  torch_model.load_flax(variables)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(clips).permute(0, 1, 4, 2, 3)).mean(1).numpy()
  assert np.abs(expected).max() > 0.05  # not a comparison of near-zero features
  np.testing.assert_allclose(flax_features, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_trn_draws_its_relations_in_training_and_fixes_them_in_evaluation():
  model = build_model(model_config('trn_bninception', width=0.125, num_classes=7, num_frames=4,
                                   dropout=0.0))
  clips = jax.random.normal(jax.random.key(0), (2, 4, 32, 32, 3))
  variables = random_variables(model, clips)
  train = jax.jit(lambda key: model.apply(variables, clips, train=True, mutable=['batch_stats'],
                                          rngs={'dropout': key})[0])
  draws = {tuple(np.round(np.asarray(train(jax.random.key(k))).ravel(), 5)) for k in range(6)}
  assert len(draws) > 1  # 3 of the 4 three-frame and of the 6 two-frame relations, drawn anew
  evaluate = jax.jit(lambda: model.apply(variables, clips))
  np.testing.assert_array_equal(evaluate(), evaluate())


def test_trn_names_the_frames_it_takes():
  for frames in (1, 32):
    model = build_model(model_config('trn_bninception', width=0.125, num_classes=7,
                                     num_frames=frames))
    with pytest.raises(ValueError, match=f'it takes 2 to 16 frames .*, not {frames}'):
      jax.eval_shape(model.init, jax.random.key(0),
                     jax.ShapeDtypeStruct((1, frames, 32, 32, 3), jnp.float32))
