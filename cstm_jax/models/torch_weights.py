"""PyTorch weights -> Flax variables: the names of the PyTorch releases of every backbone, mapped
onto this project's parameter trees. `inference/convert.py` writes the result as a checkpoint;
`train/pretrained.py` converts the files a run starts from (`train.init_from`).

Layouts read (a `module.` / `base_model.` prefix and TSM's `.net` conv wrapper are ignored; the
head may be `fc`, `new_fc`, `last_linear` or `top_cls_fc`). Each file `init_from` names has a
manifest of its tensors, read from the original code that loads it, in `tests/data/weights/`
(`tools/weight_manifests.py`), and `tests/test_weight_files.py` converts a file written to it:
- BN-Inception / Inception v3, TSN's ImageNet conversions as GSM loads them (swathikirans/GSM
  model_zoo/bninception/pytorch_load.py): the layer names of `architecture/*.csv`
  (`conv1_7x7_s2.weight`, `conv1_7x7_s2_bn.running_mean`, ...; Inception v3's head is
  `top_cls_fc`), and the GSM release, whose gate modules are `gsm_<conv>.conv3D.*` and
  `gsm_<conv>.bn.*`;
- ResNet-50, torchvision's names (`layer1.0.conv1.weight`, `layer1.0.downsample.1.weight`),
  TSM's checkpoints (`module.base_model.layer1.0.conv1.net.weight`, `module.new_fc.*`), and
  STM's authors' code for its parts (`layer1.0.shift.weight`, `layer1.0.mb.stage_conv.weight`);
  inflated into I3D-ResNet-50;
- torchvision's GoogLeNet (Inception-v1, "ported from TensorFlow"), inflated into I3D, S3D and
  S3D-G (`GOOGLENET_*`);
- TRN's release (`zhoubolei/TRN-pytorch`: TRN_{something,jester}_RGB_BNInception_
  TRNmultiscale_segment8_best.pth.tar, SSv1 and Jester): BN-Inception as TSN's, `new_fc` (the
  frame features) and `consensus.fc_fusion_scales.<i>.{1,3}` (the relations, largest scale first).
A head with another class count than the target's is dropped. A plain 2D network (no
temporal-module keys at all) converts into a model with temporal modules: their parameters (and
those of STM's parts, TRN's relations and S3D-G's gates) are left out, and the training run
initialises them (`init_from` merges). Tensors no model uses are dropped by the rules of
`DROP_RULES`, each with its name. Any other mismatch -- a missing or extra key, a wrong shape --
is an error that lists the keys.
"""
import re
from typing import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from cstm_foundation import paths
from cstm_foundation.errors import BadFile, MissingFile
from cstm_jax.config.zoo import BACKBONES
from cstm_jax.models import trn
from cstm_jax.models.build import abstract_variables, build_model
from cstm_jax.models.inception import TABLES, load_table
from cstm_jax.models.inception3d import BN_EPSILON_TF

BN_NAMES = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
INCEPTION_V1_3D = ('i3d', 's3d', 's3dg')


# --- Reading files ----------------------------------------------------------------------------

def load_state_dict(path) -> dict[str, np.ndarray]:
  """A name -> array dict from a `.pth`/`.pt` (read with `weights_only=True`), `.safetensors`
  or `.npz` file. A training checkpoint's `state_dict` entry is used when present. A file that
  is not such a dict is a `BadFile` error naming it and what is wrong."""
  path = paths.resolve(path)
  if not path.is_file():
    raise MissingFile(f'{path}: no such weights file')
  suffix = path.suffix.lower()
  readers = {'.pth': _read_torch, '.pt': _read_torch, '.tar': _read_torch,
             '.safetensors': _read_safetensors, '.npz': _read_npz}
  if suffix not in readers:
    raise BadFile(f'{path}: unknown weights format {suffix!r}; use .pth, .safetensors or .npz')
  try:
    state = readers[suffix](path)
  except (BadFile, ImportError):
    raise
  except Exception as e:  # each format fails in its own way on a damaged file
    raise BadFile(f'{path}: not a readable {suffix} weights file ({type(e).__name__}: '
                  f'{" ".join(str(e).split())[:200]})') from e
  if not state:
    raise BadFile(f'{path}: holds no tensors')
  return state


def _read_torch(path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(f'{path}: reading PyTorch files needs torch (pip install torch); or save '
                      'the state dict as .safetensors or .npz') from None
  try:
    with path.open('rb') as f:
      loaded = torch.load(f, map_location='cpu', weights_only=True)
  except Exception as e:  # pickles with code in them are refused here, by design
    raise BadFile(f'{path}: not a plain PyTorch state dict ({e})') from None
  if isinstance(loaded, dict) and isinstance(loaded.get('state_dict'), dict):
    loaded = loaded['state_dict']
  if not isinstance(loaded, dict):
    raise BadFile(f'{path}: holds a {type(loaded).__name__}, not a state dict (names -> '
                  'tensors); save model.state_dict()')
  return {k: v.detach().float().numpy() for k, v in loaded.items() if hasattr(v, 'numpy')}


def _read_npz(path) -> dict[str, np.ndarray]:
  with path.open('rb') as f, np.load(f, allow_pickle=False) as data:
    return {k: data[k] for k in data.files}


def _read_safetensors(path) -> dict[str, np.ndarray]:
  """Tensor by tensor from a memory map (a gs:// file is read whole); floats become float32,
  the parameters' dtype."""
  # Imported here: training loads this module, and a GPU image may lack safetensors.
  import safetensors
  import safetensors.numpy
  if paths.is_remote(path):
    tensors = safetensors.numpy.load(path.read_bytes())
  else:
    with safetensors.safe_open(str(path), framework='numpy') as f:
      tensors = {name: f.get_tensor(name) for name in f.keys()}
  return {name: np.asarray(t, np.float32) if np.issubdtype(t.dtype, np.floating)
          or t.dtype == jnp.bfloat16 else t for name, t in tensors.items()}


# --- Key layouts ------------------------------------------------------------------------------

def normalise_key(key: str) -> str:
  """Released-model spellings -> one canonical PyTorch name."""
  key = re.sub(r'^(module\.)?(base_model\.)?', '', key)
  key = re.sub(r'^(new_fc|last_linear|top_cls_fc)\.', 'fc.', key)
  return key.replace('.net.', '.')  # TSM wraps each shifted conv as `.net`


def _inception_key(path: tuple[str, ...], bn_names: Mapping[str, str]) -> str:
  layer, rest = path[1], path[2:]
  if rest[0] == 'conv':
    return f'{layer}.{"weight" if rest[1] == "kernel" else "bias"}'
  if rest[0] == 'bn':
    return f'{bn_names[layer]}.{BN_NAMES[rest[1]]}'
  if rest[0] == 'temporal' and rest[1] in ('gate_kernel', 'gate_bias'):
    return f'gsm_{layer}.conv3D.{"weight" if rest[1] == "gate_kernel" else "bias"}'
  if rest[0] == 'temporal' and rest[1] == 'bn':
    return f'gsm_{layer}.bn.{BN_NAMES[rest[2]]}'
  return 'temporal:' + '/'.join(path)  # a module with no PyTorch release (CSTM, SE attention)


# STM's parts under the authors' names (`<block>.shift`, `<block>.mb.*`).
STM_NAMES = {'reduce': 'stage_conv', 'spatial': 'shift', 'expand': 'conv1x1'}


def _resnet_key(path: tuple[str, ...]) -> str:
  block, rest = path[1], path[2:]
  stem = block in ('conv1', 'stem')  # 2D ResNet-50's stem, and I3D-ResNet-50's
  if stem:
    prefix, conv, bn = '', 'conv1', 'bn1'
  else:
    stage, index = re.fullmatch(r'layer(\d)_(\d+)', block).groups()
    prefix = f'layer{stage}.{index}.'
    if rest[0] == 'channel_temporal':
      return f'{prefix}shift.weight'
    if rest[0] == 'motion':  # reduce/{conv,bn}/..., spatial/kernel, expand/kernel
      part = STM_NAMES[rest[1]]
      if rest[2] == 'bn':
        return f'{prefix}mb.stage_bn.{BN_NAMES[rest[3]]}'
      return f'{prefix}mb.{part}.weight'
    if rest[0] == 'downsample':
      conv, bn = 'downsample.0', 'downsample.1'
    else:
      conv, bn = rest[0], rest[0].replace('conv', 'bn')
    rest = rest[1:]
  if rest[0] == 'conv':
    return f'{prefix}{conv}.weight'
  return f'{prefix}{bn}.{BN_NAMES[rest[1]]}'


# torchvision's GoogLeNet (the 2D Inception-v1 that I3D and S3D inflate) under the names of
# `inception3d`: its stem units, its mixed blocks (3a..5b are Mixed_3b..5c) and their branches.
GOOGLENET_STEM = {'Conv3d_1a_7x7': 'conv1', 'Conv3d_2b_1x1': 'conv2', 'Conv3d_2c_3x3': 'conv3'}
GOOGLENET_BLOCKS = dict(zip(
    ('Mixed_3b', 'Mixed_3c', 'Mixed_4b', 'Mixed_4c', 'Mixed_4d', 'Mixed_4e', 'Mixed_4f',
     'Mixed_5b', 'Mixed_5c'),
    ('inception3a', 'inception3b', 'inception4a', 'inception4b', 'inception4c', 'inception4d',
     'inception4e', 'inception5a', 'inception5b')))
GOOGLENET_BRANCHES = {'b0': 'branch1', 'b1a': 'branch2.0', 'b1b': 'branch2.1',
                      'b2a': 'branch3.0', 'b2b': 'branch3.1', 'b3b': 'branch4.1'}
IDENTITY = 'identity:'  # S3D's temporal halves: no 2D source; they start as the identity


def _googlenet_key(path: tuple[str, ...]) -> str:
  """`('backbone', unit, half, 'conv'|'bn', leaf)` -> `inception4a.branch2.1.conv.weight`;
  S3D-G's gates are new modules, S3D's temporal halves (`conv_t`) identity entries."""
  unit = path[1]
  if unit.endswith('_gating'):
    return 'temporal:' + '/'.join(path)
  if path[2] == 'conv_t':
    return IDENTITY + '/'.join(path)
  if unit in GOOGLENET_STEM:
    base = GOOGLENET_STEM[unit]
  else:
    block, branch = unit.rsplit('_', 1)
    base = f'{GOOGLENET_BLOCKS[block]}.{GOOGLENET_BRANCHES[branch]}'
  part, leaf = path[3], path[4]
  return f'{base}.conv.weight' if part == 'conv' else f'{base}.bn.{BN_NAMES[leaf]}'


def _trn_key(path: tuple[str, ...], num_frames: int) -> str:
  """TRN's names: `new_fc` (read as `fc` after normalise_key) is the frame embedding, and
  `consensus.fc_fusion_scales.<i>.{1,3}` the hidden and output layer of scale `T - i`."""
  kind = 'weight' if path[-1] == 'kernel' else 'bias'
  if path[1] == 'embed':
    return f'fc.{kind}'
  scale = int(path[1].removeprefix('relation'))
  layer = {'hidden': 1, 'out': 3}[path[2]]
  return f'consensus.fc_fusion_scales.{trn.pytorch_index(num_frames, scale)}.{layer}.{kind}'


def torch_key(path: tuple[str, ...], backbone: str, num_frames: int = 8) -> str:
  """The canonical PyTorch name of one Flax variable (`path` without 'params'/'batch_stats');
  `num_frames` numbers TRN's relation scales."""
  if path[0] == 'head':
    return f'fc.{"weight" if path[1] == "kernel" else "bias"}'
  if path[0] == 'trn':
    return _trn_key(path, num_frames)
  if backbone in TABLES:
    table, _ = load_table(backbone)
    return _inception_key(path, {layer.name: layer.bn for layer in table if layer.op == 'conv'})
  if backbone in ('resnet50', 'i3d_resnet50'):
    return _resnet_key(path)
  if backbone in INCEPTION_V1_3D:
    return _googlenet_key(path)
  raise BadFile(f'no PyTorch layout for backbone {backbone!r}; the converter reads '
                f'{sorted(TABLES) + ["resnet50", "i3d_resnet50", *INCEPTION_V1_3D]}')


def to_flax(array: np.ndarray, target_shape: tuple[int, ...]) -> np.ndarray:
  """PyTorch layout -> Flax layout: conv [O, I, *k] -> [*k, I, O], linear [O, I] -> [I, O];
  Caffe-converted BN vectors stored as [1, C] are squeezed. A 2D kernel for a 3D conv is
  inflated as I3D inflates (Carreira & Zisserman 2017, sec. 2.2; PySlowFast's
  `checkpoint.inflate_weight`): repeated along time and divided by its temporal size, so the
  3D conv gives the 2D conv's answer on a clip of one frame repeated."""
  array = np.asarray(array, np.float32)
  if array.ndim >= 3:
    array = np.transpose(array, tuple(range(2, array.ndim)) + (1, 0))
  elif array.ndim == 2 and len(target_shape) == 2:
    array = array.T
  if array.ndim > len(target_shape):
    array = array.reshape(target_shape) if array.size == np.prod(target_shape) else array
  if array.ndim == 4 and len(target_shape) == 5 and array.shape == tuple(target_shape[1:]):
    time = target_shape[0]
    array = np.repeat(array[None], time, axis=0) / time
  return array


def identity_value(path: tuple[str, ...], shape: tuple[int, ...], epsilon: float) -> np.ndarray:
  """The start of an S3D temporal half (k x 1 x 1 conv, BN, ReLU) that passes a static clip
  unchanged: each tap of the kernel is eye / k, and the BN (eps `epsilon`) is the identity
  (scale 1, bias 0, mean 0, variance 1 - eps); the ReLU then sees the spatial half's output,
  which is >= 0."""
  leaf = path[-1]
  if leaf == 'kernel':
    time, channels = shape[0], shape[-1]
    return np.broadcast_to(np.eye(channels, dtype=np.float32) / time, shape).copy()
  fill = {'scale': 1.0, 'bias': 0.0, 'mean': 0.0, 'var': 1.0 - epsilon}[leaf]
  return np.full(shape, fill, np.float32)


# --- Conversion -------------------------------------------------------------------------------

# Tensors a file holds that no model here uses, each left out by a rule with a name; any other
# key that fits nothing is an error.
DROP_RULES = {
    'BatchNorm step counts (num_batches_tracked), which inference and training ignore':
        lambda key, head: key.endswith('num_batches_tracked'),
    "GoogLeNet's auxiliary classifiers (aux1, aux2), which torchvision's googlenet(pretrained="
    'True) also removes after loading': lambda key, head: key.startswith(('aux1.', 'aux2.')),
    'the head of the weights (fc, new_fc, last_linear or top_cls_fc): the run trains its own':
        lambda key, head: head and key.startswith('fc.'),
}


def from_torch(state_dict: Mapping[str, np.ndarray], model_config) -> dict:
  """Flax `{'params', 'batch_stats'}` for `model_config` (a `config.model` block) from a
  PyTorch state dict; raises ValueError listing every missing, extra or misshapen key."""
  variables, report = convert_state_dict(state_dict, model_config)
  if report['dropped_head'] or report['new_modules']:
    logging.info('from_torch: %s the head of the weights; %d new modules',
                 'dropped' if report['dropped_head'] else 'kept', len(report['new_modules']))
  return variables


def convert_state_dict(state_dict: Mapping[str, np.ndarray], model_config) -> tuple[dict, dict]:
  """`from_torch`, also returning what it did with each key: {'dropped_head': bool,
  'new_modules': ['<layer>/temporal', ...] (left to the training run's initialisation),
  'identity': [S3D temporal halves started as the identity], 'dropped': {rule: [keys]}
  (`DROP_RULES`), 'converted': [keys]}, keys as `normalise_key` spells them. Every key of
  `state_dict` is converted or dropped by a named rule."""
  backbone = model_config['backbone']
  if backbone not in BACKBONES:
    raise BadFile(f'unknown backbone {backbone!r}')
  classes = model_config['num_classes']
  # num_classes 0: the training run takes it from the dataset, so no head is converted.
  without_head = classes == 0
  if without_head:
    model_config = {**(model_config.to_dict() if hasattr(model_config, 'to_dict')
                       else dict(model_config)), 'num_classes': 1}
  model = build_model(model_config)
  frames = model_config['num_frames']
  crop = BACKBONES[backbone].crop
  abstract = abstract_variables(model, jax.ShapeDtypeStruct((1, frames, crop, crop, 3),
                                                            jnp.float32))
  source = {normalise_key(k): np.asarray(v) for k, v in state_dict.items()}
  targets = {}  # torch key -> (collection, flax path, shape)
  for collection in ('params', 'batch_stats'):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(abstract[collection]))
    for path, leaf in flat.items():
      targets[torch_key(path, backbone, frames)] = (collection, path, leaf.shape)

  report = {'dropped_head': False, 'new_modules': [], 'identity': [], 'dropped': {},
            'converted': []}
  # Modules no PyTorch release has (CSTM, the SE attention, S3D-G's gates) start from their
  # own initialisation; so do GSM's gates, STM's parts and TRN's relations when the weights
  # are a plain 2D network without them.
  new = [k for k in targets if k.startswith('temporal:')]
  for group in (lambda k: k.startswith('gsm_'), lambda k: re.search(r'\.(shift|mb)\.', k),
                lambda k: k.startswith('consensus.')):
    keys = [k for k in targets if group(k)]
    if not any(k in source for k in keys):
      new += keys
  # A module by its first two names below the backbone: 'inception_3a_1x1/temporal',
  # 'layer1_0/motion', 'trn/relation4'.
  module = lambda path: '/'.join((path[1:] if path[0] == 'backbone' else path)[:2])
  report['new_modules'] = sorted({module(targets[k][1]) for k in new})
  for k in new:
    del targets[k]
  variables = {'params': {}, 'batch_stats': {}}
  identity = [k for k in targets if k.startswith(IDENTITY)]
  for k in identity:
    collection, path, shape = targets.pop(k)
    variables[collection][path] = identity_value(path, shape, BN_EPSILON_TF)
  report['identity'] = sorted({module(path[:3]) for path in
                               (tuple(k[len(IDENTITY):].split('/')) for k in identity)})
  head = source.get('fc.weight')
  head_target = targets.get('fc.weight')  # (TRN's `fc` is its frame embedding)
  drop_head = without_head or (head is not None and head_target is not None
                               and head.shape[0] != head_target[2][-1])
  if drop_head:
    targets = {k: v for k, v in targets.items() if not k.startswith('fc.')}
    report['dropped_head'] = head is not None
  for rule, applies in DROP_RULES.items():
    keys = sorted(k for k in source if applies(k, drop_head))
    if keys:
      report['dropped'][rule] = keys
      source = {k: v for k, v in source.items() if k not in keys}

  missing = sorted(set(targets) - set(source))
  extra = sorted(set(source) - set(targets))
  misshapen = []
  for key in sorted(set(targets) & set(source)):
    collection, path, shape = targets[key]
    value = to_flax(source[key], shape)
    if value.shape != tuple(shape):
      misshapen.append(f'{key}: {source[key].shape} for {"/".join(path)} {tuple(shape)}')
      continue
    variables[collection][path] = value
    report['converted'].append(key)
  problems = describe_mismatch(missing, extra, misshapen)
  if problems:
    head_said = f'{classes} classes' if classes else 'no head (classes from the dataset)'
    raise BadFile(f'the weights do not fit {backbone} / {model_config["temporal"]} '
                  f'(width {model_config["width"]}, {head_said}): {problems}')
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in variables.items()}, report


def describe_mismatch(missing, unexpected, misshapen, shown: int = 12) -> str:
  """'2 missing: a, b; 1 unexpected: c' for the non-empty lists ('' when all are empty)."""
  return '; '.join(f'{len(v)} {kind}: {", ".join(v[:shown])}{" ..." if len(v) > shown else ""}'
                   for kind, v in (('missing', missing), ('unexpected', unexpected),
                                   ('wrong shapes', misshapen)) if v)
