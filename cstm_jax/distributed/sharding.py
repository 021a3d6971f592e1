"""Device mesh, parameter shardings and global batches (jax.jit with shardings; no pmap).

The mesh has a `data` axis (the batch is split over it) and a `model` axis (1 by default:
parameters replicated). With `model > 1`, parameters of at least `shard_threshold` elements are
split over `model` along their largest divisible dimension (and so is their optimizer state).
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from cstm_foundation.errors import ConfigError


def make_mesh(model_axis: int = 1, devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  if devices.size % model_axis:
    raise ConfigError(f'{devices.size} devices do not split into a model axis of {model_axis}')
  return Mesh(devices.reshape(devices.size // model_axis, model_axis), ('data', 'model'),
              axis_types=(jax.sharding.AxisType.Auto,) * 2)


def compiler_options(mesh: Mesh, gpu_conv_nhwc: bool = False) -> dict:
  """XLA options for a step compiled for `mesh`'s devices. On GPUs `gpu_conv_nhwc` keeps
  convolutions channels-last: XLA:GPU otherwise gives 3D convolutions NCDHW and wraps each of
  CSTM's grouped 3D convolutions in activation transposes (docs/accelerators.md)."""
  if mesh.devices.flat[0].platform == 'gpu':
    return {'xla_gpu_force_conv_nhwc': gpu_conv_nhwc}
  return {}


def leaf_spec(shape, model_axis: int, threshold: int) -> P:
  """Replicated, or split over `model` along the largest dimension it divides."""
  if model_axis == 1 or int(np.prod(shape, dtype=np.int64)) < threshold:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % model_axis == 0:
      return P(*([None] * dim + ['model']))
  return P()


def state_shardings(abstract_state, mesh: Mesh, threshold: int = 2 ** 20):
  model_axis = mesh.shape['model']
  return jax.tree_util.tree_map(
      lambda leaf: NamedSharding(mesh, leaf_spec(getattr(leaf, 'shape', ()), model_axis,
                                                 threshold)), abstract_state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over `data`, every other axis whole."""
  return NamedSharding(mesh, P('data'))


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """This process's NumPy batch -> global jax.Arrays sharded over `data`."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}


def check_batch(global_size: int, mesh: Mesh, what: str = 'batch', *,
                key: str = 'data.batch_size') -> None:
  """Refuses a global batch (config key `key`) that the data axis or the processes cannot split."""
  data_axis = mesh.shape['data']
  if global_size % data_axis:
    raise ConfigError(f'global {what} size {global_size} is not divisible by the {data_axis} '
                      f'devices of the data axis ({jax.device_count()} devices in all): set '
                      f'--config.{key} to a multiple of {data_axis}')
  if global_size % jax.process_count():
    raise ConfigError(f'global {what} size {global_size} does not split over '
                      f'{jax.process_count()} processes: set --config.{key} to a multiple of '
                      f'{jax.process_count()}')


def to_host(x) -> np.ndarray:
  """A global array (possibly spread over processes) as one NumPy array on every process."""
  if jax.process_count() == 1 or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def local_accelerators() -> int:
  """GPUs or TPU chips this process drives (0 on a CPU host)."""
  return sum(d.platform != 'cpu' for d in jax.local_devices())
