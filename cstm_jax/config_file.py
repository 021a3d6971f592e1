"""Experiment configs read outside `main.py`: a config file (with its `:arg`) or a run's JSON."""
import importlib.util
import json

import ml_collections

from cstm_jax import paths


def load(spec) -> ml_collections.ConfigDict:
  """'configs/ssv2_16f.py', 'configs/ssv2_16f.py:smoke' or a workdir's 'config.json' (local or
  gs://)."""
  spec = str(spec)
  if paths.is_remote(spec):
    path, arg = paths.resolve(spec), ''
  else:
    path, _, arg = spec.partition(':')
    path = paths.resolve(path)
  if not path.is_file():
    raise FileNotFoundError(f'{path}: no such config file')
  if path.suffix == '.json':
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  if paths.is_remote(path):
    raise ValueError(f'{path}: a config file is read from a local disk (only a run\'s '
                     'config.json may be in Cloud Storage)')
  module_spec = importlib.util.spec_from_file_location(f'_config_{path.stem}', str(path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'{path}: a config file defines get_config(arg)')
  return module.get_config(arg) if arg else module.get_config()


def parse_flags(argv: list[str]) -> list[str]:
  """absl `flags_parser` that expands `~` and `$VARS` in `--config=FILE[:ARG]` first (the shell
  does not expand `~` after `=`, and config_flags reads the file while parsing)."""
  from absl import flags
  expanded = []
  for arg in argv:
    if arg.startswith('--config='):
      path, colon, rest = arg[len('--config='):].partition(':')
      arg = f'--config={paths.expand(path)}{colon}{rest}'
    expanded.append(arg)
  return flags.FLAGS(expanded)
