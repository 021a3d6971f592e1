"""Starting weights by name: `train.init_from = 'imagenet'` or `'kinetics'` is the file the
original code trains the row's network from, downloaded once into a cache, checked, converted
once and reused.

- 'imagenet': the ImageNet network each original starts from: TSN's BN-Inception and Inception v3
  (GSM), torchvision's ResNet-50 (TSM, STM; inflated into I3D-ResNet-50) and torchvision's
  GoogLeNet, TensorFlow's Inception-v1 ported (inflated into I3D, S3D, S3D-G).
- 'kinetics': TSM's Kinetics-400 release for the row's model and frame count (README, "Kinetics
  pretrained models" with uniform sampling), loaded whole but for its 400-class head, as TSM's
  `main.py --tune_from` loads it into a new dataset's model.

The cache is `$CSTM_CACHE`, else `~/.cache/cstm_jax`: `weights/<file>` holds the download and
`converted/` the Flax variables of each model it was converted for (`.npz`). Where hosts have no
internet, `$CSTM_WEIGHTS_MIRROR` names a folder (local or gs://) holding the files under their
own names; it is read instead of the URL. Writers never leave a partial file: each writes a file
of its own and renames it into place, so the processes of a job, on one host or sharing the
cache, may fetch at once without racing.

Integrity: a file whose name carries a hash (`resnet50-19c8e357.pth`) must have a SHA-256 that
starts with it, as `torch.hub` checks these files. TSM's file names carry none: their size and
SHA-256 are recorded beside the download at its first fetch (`weights/<file>.sha256`) and checked
on every later read, so a damaged or replaced file is refused by name.
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
from typing import Optional

import flax
import numpy as np
from absl import logging

from cstm_foundation import paths, stopping
from cstm_foundation.errors import BadFile, ConfigError, MissingFile
from cstm_jax.models import torch_weights

IMAGENET = 'imagenet'
KINETICS = 'kinetics'
SCRATCH = 'scratch'
STARTS = {IMAGENET: 'ImageNet', KINETICS: 'Kinetics'}  # init_from -> how logs name it
MIRROR = 'CSTM_WEIGHTS_MIRROR'


@dataclasses.dataclass(frozen=True)
class Weights:
  url: str
  source: str  # the original code that trains from this file

  @property
  def file(self) -> str:
    return self.url.rsplit('/', 1)[1]

  @property
  def sha256_prefix(self) -> Optional[str]:
    """The hex digits of the name (`name-<hex>.pth`), or None when it carries none."""
    match = re.search(r'-([a-f0-9]{8,})\.', self.file)
    return match.group(1) if match else None


_BN_INCEPTION = Weights(
    'https://yjxiong.blob.core.windows.net/models/bn_inception-9f5701afb96c8044.pth',
    'TSN and GSM (swathikirans/GSM): model_zoo/bninception/pytorch_load.py, BNInception')
_RESNET50 = Weights(
    'https://download.pytorch.org/models/resnet50-19c8e357.pth',
    'TSM (mit-han-lab/temporal-shift-module): ops/models.py, torchvision resnet50(pretrained=True)')
_GOOGLENET = Weights(
    'https://download.pytorch.org/models/googlenet-1378be20.pth',
    'torchvision models/googlenet.py ("GoogLeNet ported from TensorFlow", the Inception-v1 that '
    'I3D and S3D inflate)')
IMAGENET_WEIGHTS = {
    'bninception': _BN_INCEPTION,
    'inception_v3': Weights(
        'https://yjxiong.blob.core.windows.net/models/inceptionv3-cuhk-0e09b300b493bc74c.pth',
        'GSM (swathikirans/GSM): model_zoo/bninception/pytorch_load.py, InceptionV3'),
    'resnet50': _RESNET50,
    'i3d_resnet50': _RESNET50,
    'i3d': _GOOGLENET,
    's3d': _GOOGLENET,
    's3dg': _GOOGLENET,
}
_TSM_MODELS = 'https://hanlab18.mit.edu/projects/tsm/models'
# (temporal module, frames; None: any) -> TSM's Kinetics release of ResNet-50.
KINETICS_WEIGHTS = {
    ('tsn', None): Weights(f'{_TSM_MODELS}/TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth',
                           'TSM README, TSN ResNet50 (2D) 8 * 1clip; '
                           'scripts/train_tsn_kinetics_rgb_5f.sh'),
    ('tsm', 8): Weights(
        f'{_TSM_MODELS}/TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth',
        'TSM README, TSM ResNet50 8 * 1clip; scripts/train_tsm_kinetics_rgb_8f.sh'),
    ('tsm', 16): Weights(
        f'{_TSM_MODELS}/TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth',
        'TSM README, TSM ResNet50 16 * 1clip; scripts/train_tsm_kinetics_rgb_16f.sh'),
}
# Backbones that train from scratch in their paper, and why.
FROM_SCRATCH = {
    'r2plus1d_18': 'R(2+1)D trains from scratch in its paper (Tran et al. 2018)',
    'r2plus1d_34': 'R(2+1)D trains from scratch in its paper (Tran et al. 2018)',
}


def cache_dir() -> pathlib.Path:
  return paths.resolve(os.environ.get('CSTM_CACHE') or '~/.cache/cstm_jax')


def is_scratch(init_from: str) -> bool:
  return init_from in ('', SCRATCH)


def weights_for(init_from: str, model_config) -> Weights:
  """The file `init_from` ('imagenet' or 'kinetics') names for `model_config` (a `config.model`
  block), or a ConfigError saying which models have one."""
  backbone, temporal = model_config['backbone'], model_config['temporal']
  instead = "set --config.train.init_from=scratch or a converted checkpoint's path"
  if init_from == IMAGENET:
    if backbone not in IMAGENET_WEIGHTS:
      why = f' ({FROM_SCRATCH[backbone]})' if backbone in FROM_SCRATCH else ''
      raise ConfigError(f"train.init_from='imagenet': no ImageNet weights are known for backbone "
                        f'{backbone!r}{why}; known: {", ".join(IMAGENET_WEIGHTS)}; {instead}')
    return IMAGENET_WEIGHTS[backbone]
  if init_from == KINETICS:
    frames = model_config['num_frames']
    found = backbone == 'resnet50' and (KINETICS_WEIGHTS.get((temporal, None))
                                        or KINETICS_WEIGHTS.get((temporal, frames)))
    if not found:
      known = ', '.join(f'{t}_resnet50' + (f' at {n} frames' if n else '')
                        for t, n in KINETICS_WEIGHTS)
      raise ConfigError(f"train.init_from='kinetics': TSM released no Kinetics weights for "
                        f'{temporal}_{backbone} at {frames} frames (known: {known}); '
                        f"use --config.train.init_from=imagenet, or {instead.removeprefix('set ')}")
    return found
  raise ConfigError(f'train.init_from={init_from!r} is not a start by name '
                    f'({", ".join(STARTS)})')


def starting_variables(init_from: str, model_config) -> dict:
  """`{'params', 'batch_stats'}` of the network of `model_config` (a `config.model` block)
  from the file `init_from` names (`weights_for`), without a head: converted from the cache
  when an earlier run converted them for the same model, else downloaded (or read from the
  cache), checked and converted."""
  weights = weights_for(init_from, model_config)
  block = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  block = {**block, 'num_classes': 0, 'dtype': 'float32'}  # the network's, without a head
  key = hashlib.sha256(json.dumps([weights.file, block], sort_keys=True).encode()).hexdigest()
  converted = cache_dir() / 'converted' / f'{pathlib.Path(weights.file).stem}_{key[:16]}.npz'
  label = STARTS[init_from]
  if converted.is_file():
    logging.info('%s weights of %s: the conversion in %s', label, block['backbone'], converted)
    return _read_npz(converted)
  path = fetch(weights, label)
  variables, report = convert_file(path, block)
  for rule, keys in report['dropped'].items():
    logging.info('%s: left out %d tensors: %s', weights.file, len(keys), rule)
  _write_atomically(converted, lambda tmp: np.savez(tmp, **_flat(variables)))
  logging.info('%s weights of %s: converted %s into %s', label, block['backbone'], path,
               converted)
  return variables


def convert_file(path, block: dict) -> tuple[dict, dict]:
  """The variables of the model `block` describes from the weights file at `path`, as a run
  converts them, and what became of each tensor (`torch_weights.convert_state_dict`): every
  one is converted or dropped by a named rule (`torch_weights.DROP_RULES`)."""
  try:
    state_dict = torch_weights.load_state_dict(path)
  except ImportError:
    raise ConfigError(f'{path}: reading PyTorch weights needs torch once (pip install torch, '
                      'the CPU build will do); the converted weights are then cached in '
                      f'{cache_dir() / "converted"}') from None
  try:
    return torch_weights.convert_state_dict(state_dict, block)
  except BadFile as e:  # name the file as well as what does not fit
    raise BadFile(f'{path}: {e}') from None


def fetch(weights: Weights, label: str = 'ImageNet') -> pathlib.Path:
  """The checked file of `weights` in the cache: there already, or copied from
  `$CSTM_WEIGHTS_MIRROR`, or downloaded."""
  target = cache_dir() / 'weights' / weights.file
  if target.is_file() and _intact(target, weights):
    return target
  by_hand = (f'download {weights.url} by hand into {target} (or set {MIRROR} to a folder or '
             f'gs:// path that holds {weights.file}), then run the same command')
  mirror = os.environ.get(MIRROR)
  source = f'{mirror.rstrip("/")}/{weights.file}' if mirror else weights.url
  logging.info('Fetching the %s weights %s from %s', label, weights.file, source)
  try:
    if mirror:
      with paths.resolve(source).open('rb') as reader:
        _write_atomically(target, lambda tmp: _copy(reader, tmp))
    else:
      with urllib.request.urlopen(weights.url, timeout=60) as reader:
        _write_atomically(target, lambda tmp: _copy(reader, tmp))
  except (urllib.error.URLError, OSError, ValueError) as error:
    reason = getattr(error, 'reason', None) or error
    raise MissingFile(f'{source}: the {label} weights {weights.file} could not be fetched '
                      f'({reason}); {by_hand}') from None
  digest, size = _digest(target)
  expected = weights.sha256_prefix
  if expected and not digest.startswith(expected):
    target.unlink()
    raise BadFile(f'{source}: the file fetched has SHA-256 {digest[:16]}..., not '
                  f'{expected}... as its name says (a damaged or different file; '
                  f'removed); {by_hand}')
  if not expected:
    record = _record(target)
    if record and record != {'size': size, 'sha256': digest}:
      target.unlink()
      raise BadFile(f'{source}: the file fetched has {size} bytes and SHA-256 {digest[:16]}..., '
                    f'not the {record["size"]} bytes and {record["sha256"][:16]}... recorded at '
                    f'its first download in {_record_path(target)} (a damaged or different '
                    'file; removed); fetch it again, or remove the record if the file was '
                    'replaced on purpose')
    if not record:
      _write_record(target, size, digest)
  return target


def _write_record(target: pathlib.Path, size: int, digest: str) -> None:
  _write_atomically(_record_path(target), lambda tmp: tmp.write_text(
      json.dumps({'size': size, 'sha256': digest}) + '\n'))
  logging.info('%s: %d bytes, SHA-256 %s, recorded in %s', target.name, size, digest,
               _record_path(target))


def _record_path(target: pathlib.Path) -> pathlib.Path:
  return target.with_name(target.name + '.sha256')


def _record(target: pathlib.Path) -> Optional[dict]:
  try:
    return json.loads(_record_path(target).read_text())
  except (OSError, ValueError):
    return None


def _intact(target: pathlib.Path, weights: Weights) -> bool:
  """A cached file is used when it has the hash its name says, or the size and hash recorded at
  its first download (a file put there by hand, with no record yet, is recorded now)."""
  if weights.sha256_prefix:
    return _digest(target)[0].startswith(weights.sha256_prefix)
  record = _record(target)
  if record is None:
    digest, size = _digest(target)
    _write_record(target, size, digest)
    return True
  digest, size = _digest(target)
  return record == {'size': size, 'sha256': digest}


def _copy(reader, path: pathlib.Path) -> None:
  """Copies in MiB chunks; a stop request ends it (the partial file is removed)."""
  with path.open('wb') as out:
    while chunk := reader.read(1 << 20):
      stopping.check('while fetching the starting weights (before the run started)')
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


def _digest(path: pathlib.Path) -> tuple[str, int]:
  """(SHA-256 hex digest, size in bytes) of the file at `path`."""
  digest, size = hashlib.sha256(), 0
  with path.open('rb') as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
      size += len(chunk)
  return digest.hexdigest(), size


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
