"""ImageNet weights by name: `train.init_from = 'imagenet'` is the file the original code trains
the backbone from, downloaded once into a cache, checked, converted once and reused.

The cache is `$CSTM_CACHE`, else `~/.cache/cstm_jax`: `weights/<file>` holds the download and
`converted/` the Flax variables of each model it was converted for (`.npz`). Where hosts have no
internet, `$CSTM_WEIGHTS_MIRROR` names a folder (local or gs://) holding the files under their
own names; it is read instead of the URL. Writers never leave a partial file: each writes a file
of its own and renames it into place, so the processes of a job, on one host or sharing the
cache, may fetch at once without racing. A file's SHA-256 must start with the hex digits of its
name, as `torch.hub` checks these files.
"""
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import tempfile
import urllib.error
import urllib.request

import flax
import numpy as np
from absl import logging

from cstm_foundation import paths, stopping
from cstm_foundation.errors import BadFile, ConfigError, MissingFile
from cstm_jax.models import torch_weights

IMAGENET = 'imagenet'
SCRATCH = 'scratch'


@dataclasses.dataclass(frozen=True)
class Weights:
  url: str
  source: str  # the original code that trains the backbone from this file

  @property
  def file(self) -> str:
    return self.url.rsplit('/', 1)[1]

  @property
  def sha256_prefix(self) -> str:
    return re.search(r'-([a-f0-9]+)\.', self.file).group(1)


IMAGENET_WEIGHTS = {
    'bninception': Weights(
        'https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth',
        'TSN and GSM (swathikirans/GSM): model_zoo/bninception/pytorch_load.py, BNInception'),
    'inception_v3': Weights(
        'https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth',
        'GSM (swathikirans/GSM): model_zoo/bninception/pytorch_load.py, InceptionV3'),
    'resnet50': Weights(
        'https://download.pytorch.org/models/resnet50-19c8e357.pth',
        'TSM (mit-han-lab/temporal-shift-module): ops/models.py, torchvision resnet50('
        'pretrained=True)'),
}


def cache_dir() -> pathlib.Path:
  return paths.resolve(os.environ.get('CSTM_CACHE') or '~/.cache/cstm_jax')


def is_scratch(init_from: str) -> bool:
  return init_from in ('', SCRATCH)


def check_available(backbone: str) -> Weights:
  """The ImageNet weights of `backbone`, or a ConfigError naming the backbones that have them."""
  if backbone not in IMAGENET_WEIGHTS:
    raise ConfigError(f"train.init_from='imagenet': no ImageNet weights are known for backbone "
                      f'{backbone!r} (known: {", ".join(IMAGENET_WEIGHTS)}); set '
                      "--config.train.init_from=scratch or a converted checkpoint's path")
  return IMAGENET_WEIGHTS[backbone]


def imagenet_variables(model_config) -> dict:
  """`{'params', 'batch_stats'}` of the backbone of `model_config` (a `config.model` block) from
  its ImageNet weights: converted from the cache when an earlier run converted them for the
  same model, else downloaded (or read from the cache), checked and converted."""
  weights = check_available(model_config['backbone'])
  block = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  block = {**block, 'num_classes': 0, 'dtype': 'float32'}  # the backbone's, without a head
  key = hashlib.sha256(json.dumps([weights.file, block], sort_keys=True).encode()).hexdigest()
  converted = cache_dir() / 'converted' / f'{pathlib.Path(weights.file).stem}_{key[:16]}.npz'
  if converted.is_file():
    logging.info('ImageNet weights of %s: the conversion in %s', block['backbone'], converted)
    return _read_npz(converted)
  path = fetch(weights)
  try:
    state_dict = torch_weights.load_state_dict(path)
  except ImportError:
    raise ConfigError(f'{path}: reading the PyTorch ImageNet weights needs torch once (pip install '
                      'torch, the CPU build will do); the converted weights are then cached in '
                      f'{converted.parent}') from None
  variables = torch_weights.from_torch(state_dict, block)
  _write_atomically(converted, lambda tmp: np.savez(tmp, **_flat(variables)))
  logging.info('ImageNet weights of %s: converted %s into %s', block['backbone'], path, converted)
  return variables


def fetch(weights: Weights) -> pathlib.Path:
  """The checked file of `weights` in the cache: there already, or copied from
  `$CSTM_WEIGHTS_MIRROR`, or downloaded."""
  target = cache_dir() / 'weights' / weights.file
  if target.is_file() and _sha256(target).startswith(weights.sha256_prefix):
    return target
  by_hand = (f'download it by hand into {target} (or set CSTM_WEIGHTS_MIRROR to a folder or gs:// '
             'path that holds it), then run the same command')
  mirror = os.environ.get('CSTM_WEIGHTS_MIRROR')
  source = f'{mirror.rstrip("/")}/{weights.file}' if mirror else weights.url
  logging.info('Fetching the ImageNet weights %s from %s', weights.file, source)
  try:
    if mirror:
      with paths.resolve(source).open('rb') as reader:
        _write_atomically(target, lambda tmp: _copy(reader, tmp))
    else:
      with urllib.request.urlopen(weights.url, timeout=60) as reader:
        _write_atomically(target, lambda tmp: _copy(reader, tmp))
  except (urllib.error.URLError, OSError, ValueError) as error:
    reason = getattr(error, 'reason', None) or error
    raise MissingFile(f'{source}: the ImageNet weights could not be fetched ({reason}); '
                      f'{by_hand}') from None
  digest = _sha256(target)
  if not digest.startswith(weights.sha256_prefix):
    target.unlink()
    raise BadFile(f'{source}: the file fetched has SHA-256 {digest[:16]}..., not '
                  f'{weights.sha256_prefix}... as its name says (a damaged or different file; '
                  f'removed); {by_hand}')
  return target


def _copy(reader, path: pathlib.Path) -> None:
  """Copies in MiB chunks; a stop request ends it (the partial file is removed)."""
  with path.open('wb') as out:
    while chunk := reader.read(1 << 20):
      stopping.check('while fetching the ImageNet weights (before the run started)')
      out.write(chunk)


def _write_atomically(target: pathlib.Path, write) -> None:
  """`write(tmp)` into a file of this process beside `target`, renamed into place when whole."""
  target.parent.mkdir(parents=True, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=target.parent, prefix=f'.{target.name}.',
                                 suffix=target.suffix)
  os.close(handle)
  try:
    write(pathlib.Path(tmp))
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)


def _sha256(path: pathlib.Path) -> str:
  with path.open('rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def _flat(variables) -> dict:
  return {f'{collection}/{name}': np.asarray(value)
          for collection in ('params', 'batch_stats')
          for name, value in flax.traverse_util.flatten_dict(
              flax.core.unfreeze(variables[collection]), sep='/').items()}


def _read_npz(path: pathlib.Path) -> dict:
  with np.load(path) as arrays:
    flat = {key: arrays[key] for key in arrays.files}
  return {collection: flax.traverse_util.unflatten_dict(
      {k.split('/', 1)[1]: v for k, v in flat.items() if k.startswith(f'{collection}/')},
      sep='/') for collection in ('params', 'batch_stats')}
