"""The jitted steps as main.py builds them keep every activation on its own device."""
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cstm_jax.analysis import aot, hlo_stats
from cstm_jax.config import finish, loader
from cstm_jax.distributed import sharding
from cstm_jax.models import temporal_ops
from cstm_jax.models.video import normalise
from cstm_jax.train import program, steps
from input_pipeline.conventions import NORMALISATION
from torch_reference import reference_normalise

ROOT = pathlib.Path(__file__).resolve().parent.parent


def smoke_cstm():
  config = loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke'))
  config.model.num_classes = 174
  return finish.without_data(config)


def all_gathers(lowered) -> list:
  return hlo_stats.step_stats(lowered.compile().as_text()).all_gathers


def test_train_and_eval_steps_on_eight_devices_gather_no_activations():
  config = smoke_cstm()
  mesh = program.make_mesh(config)
  assert mesh.shape == {'data': 8, 'model': 1}  # parameters replicated: any gather is activations
  for step in ('train', 'eval'):
    assert all_gathers(aot.step_builder(config, mesh, step)(config.data.batch_size)) == [], step


def test_a_grouped_convolution_jitted_without_the_mesh_gathers_the_batch():
  # What MeshStep prevents. XLA's partitioner gathers the whole batch onto every device for a
  # native grouped convolution (GPUs run CSTM's 3D branch that way; this CPU runs one dense
  # convolution per group instead, which it splits over the batch anyway).
  mesh = sharding.make_mesh(1)
  x = jax.ShapeDtypeStruct((16, 4, 8, 8, 32), np.float32, sharding=NamedSharding(mesh, P('data')))
  kernel = jax.ShapeDtypeStruct((3, 3, 3, 16, 32), np.float32, sharding=NamedSharding(mesh, P()))
  native = lambda x, kernel: jax.lax.conv_general_dilated(
      x, kernel, (1, 1, 1), [(1, 1)] * 3, dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
      feature_group_count=2)
  per_shard = jax.jit(temporal_ops.per_batch_shard(native))
  assert all_gathers(per_shard.lower(x, kernel))  # no mesh set: the op cannot split the batch
  assert all_gathers(steps.MeshStep(per_shard, mesh).lower(x, kernel)) == []


def test_clips_are_normalised_on_the_device_as_they_were_on_the_host():
  pixel = np.array([[[10, 20, 30]]], np.uint8)  # R, G, B
  np.testing.assert_allclose(normalise(pixel, 'bgr255')[0, 0],
                             [30 - 104, 20 - 117, 10 - 128])
  expected = (np.array([10, 20, 30]) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
  np.testing.assert_allclose(normalise(pixel, 'rgb_imagenet')[0, 0], expected, rtol=1e-5)
  batch = np.random.default_rng(0).integers(0, 256, (2, 4, 8, 8, 3), np.uint8)
  for input_norm in NORMALISATION:
    np.testing.assert_allclose(jax.jit(normalise, static_argnums=1)(batch, input_norm),
                               reference_normalise(batch, input_norm), rtol=1e-6, atol=1e-5)
  with pytest.raises(TypeError, match='uint8 RGB clips'):
    normalise(batch.astype(np.float32), 'bgr255')
