"""Pools against PyTorch (the reference implementation the layer tables come from)."""
import numpy as np
import pytest
import torch

from cstm_jax.models import layers


@pytest.mark.parametrize('size, window, stride, pad', [
    (112, 3, 2, 0), (56, 3, 2, 0), (27, 3, 2, 0), (13, 3, 2, 0), (7, 3, 1, 1), (6, 3, 2, 1),
    (10, 2, 2, 0),
])
def test_max_pool_ceil_matches_torch_ceil_mode(size, window, stride, pad):
  x = np.random.default_rng(0).normal(size=(2, size, size + 1, 4)).astype(np.float32)
  got = np.asarray(layers.max_pool_ceil(x, (window, window), (stride, stride), (pad, pad)))
  expected = torch.nn.functional.max_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), window, stride, pad, ceil_mode=True)
  np.testing.assert_array_equal(got, expected.permute(0, 2, 3, 1).numpy())


def test_avg_pool_counts_padding_like_torch():
  x = np.random.default_rng(0).normal(size=(2, 7, 9, 4)).astype(np.float32)
  got = np.asarray(layers.avg_pool_include_pad(x, (3, 3), (1, 1), (1, 1)))
  expected = torch.nn.functional.avg_pool2d(
      torch.from_numpy(x).permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=True)
  np.testing.assert_allclose(got, expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_scale_channels_keeps_the_published_widths():
  assert [layers.scale_channels(c, 1.0) for c in (3, 45, 64, 352)] == [3, 45, 64, 352]
  assert [layers.scale_channels(c, 0.125) for c in (32, 64, 352, 1024)] == [8, 8, 48, 128]
