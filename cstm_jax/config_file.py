"""Experiment configs read outside `main.py`: a config file (with its `:arg`) or a run's JSON."""
import importlib.util
import json
import pathlib

import ml_collections


def load(spec: str) -> ml_collections.ConfigDict:
  """'configs/ssv2_16f.py', 'configs/ssv2_16f.py:smoke' or a workdir's 'config.json'."""
  path, _, arg = str(spec).partition(':')
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such config file')
  if path.suffix == '.json':
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  module_spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: a config file defines get_config(arg)')
  return module.get_config(arg) if arg else module.get_config()
