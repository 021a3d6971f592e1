"""Helpers for tests that train: smoke configs, a run's final parameters, a free port."""
import pathlib
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp


def smoke(module, data_dir, **overrides):
  config = module.get_config('smoke')
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


def final_params(workdir):
  """(step, parameters as NumPy arrays) of a run's latest checkpoint, whatever devices and
  processes saved it."""
  folder = pathlib.Path(workdir).absolute() / 'checkpoints'
  step = max(int(p.name) for p in folder.iterdir() if p.name.isdigit())
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(folder / str(step) / 'state').item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree_util.tree_map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)
  state = checkpointer.restore(folder / str(step) / 'state', abstract)
  return step, [np.asarray(x) for x in jax.tree_util.tree_leaves(state['params'])]


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]
