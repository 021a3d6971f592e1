"""The one place that maps a `config.model` block to a Flax module."""
import functools
import weakref
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cstm_foundation.errors import ConfigError
from cstm_jax.config import defaults, zoo
from cstm_jax.models import inception, inception3d, r2plus1d, resnet, stm, temporal_modules as tm
from cstm_jax.models.video import VideoClassifier


def checked(model_config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`model_config` (a ConfigDict or a dict) as a ConfigDict, if it has the keys of the base
  config's model block (an older run's keys are brought up to date: `defaults.upgraded`) and its
  backbone, temporal module,
  consensus and dtype go together; else a ConfigError naming the problem."""
  values = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  values = defaults.upgraded({'model': values})['model']
  keys = list(defaults.get_config().model)
  unknown, missing = sorted(set(values) - set(keys)), sorted(set(keys) - set(values))
  if unknown or missing:
    raise ConfigError(f'model config: unknown keys {unknown}, missing keys {missing}; '
                      f'the keys are {keys}')
  config = ml_collections.ConfigDict(values)
  if config.backbone not in zoo.BACKBONES:
    raise ConfigError(f'unknown backbone {config.backbone!r}; known: {sorted(zoo.BACKBONES)}')
  allowed = zoo.temporal_modules(config.backbone)
  if config.temporal not in allowed:
    raise ConfigError(f'temporal module {config.temporal!r} does not fit backbone '
                      f'{config.backbone!r}; choose one of {list(allowed)}')
  if config.consensus not in zoo.CONSENSUS:
    raise ConfigError(f'unknown consensus {config.consensus!r}; known: {list(zoo.CONSENSUS)}')
  if config.consensus == 'trn_multiscale' and config.temporal != 'tsn':
    raise ConfigError(f"consensus 'trn_multiscale' (TRN) takes a 2D backbone without a temporal "
                      f"module (temporal 'tsn'), not temporal {config.temporal!r}")
  if config.partial_bn and (config.backbone not in ('bninception', 'inception_v3')
                            or config.temporal != 'tsn'):
    raise ConfigError(f"model.partial_bn (TSN's partial BatchNorm) is for an Inception backbone "
                      f"without a temporal module (temporal 'tsn'), not {config.backbone!r} "
                      f'with {config.temporal!r}')
  if config.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f"model dtype {config.dtype!r} is not 'float32', 'bfloat16' or 'float16'")
  return config


def _settings(config, *keys) -> dict:
  """`config.model` keys as the module attributes of the same names."""
  return {key: config[key] for key in keys}


def temporal_module(config, dtype) -> Optional[functools.partial]:
  """The temporal module of `config` as a constructor still missing `num_frames`. Every
  module attribute set from the config has the name of its key."""
  learned = {'dtype': dtype}
  gsm = functools.partial(tm.GateShift, **_settings(config, 'gsm_interleave', 'shift_impl'),
                          **learned)
  cstm = functools.partial(
      tm.CSTM,
      **_settings(config, 'attention_pool', 'cstm_shift', 'shift_div', 'shift_impl',
                  'gsm_interleave', 'conv3d_grouping', 'conv3d_group_width'), **learned)
  return {
      'tsn': None,
      'none': None,
      'tsm': functools.partial(tm.TemporalShift, **_settings(config, 'shift_div', 'shift_impl')),
      'stm': None,  # its parts are in each block (models/stm.py)
      'gsm': gsm,
      'gsm_attention': functools.partial(gsm, attention=True),
      '3d_shift_sum': functools.partial(cstm, attention=False),
      'cstm': cstm,
  }[config.temporal]


def build_model(model_config: Mapping[str, Any]) -> VideoClassifier:
  """Returns the Flax module for a `config.model` block (a ConfigDict or a dict).

  The block holds the keys of `defaults.get_config().model` (`defaults.model_config`
  makes one for a named model).
  The module maps normalised clips
  `[N, T, H, W, 3]` to logits `[N, num_classes]`; call it with `train=True` for dropout and
  batch statistics (mutable 'batch_stats').
  """
  config = checked(model_config)
  if config.num_classes < 1:
    raise ConfigError(f'model.num_classes is {config.num_classes}: training takes it from the '
                      'prepared dataset when it is 0; set --config.model.num_classes to build '
                      'the model without a dataset')
  dtype = jnp.dtype(config.dtype)
  common = {'width': config.width, 'dtype': dtype}
  temporal = temporal_module(config, dtype)
  backbone = {
      'bninception': functools.partial(inception.InceptionBackbone, 'bninception', temporal,
                                       partial_bn=config.partial_bn),
      'inception_v3': functools.partial(inception.InceptionBackbone, 'inception_v3', temporal,
                                        partial_bn=config.partial_bn),
      # STM's blocks replace the bottlenecks (its parts are in them, not a temporal module).
      'resnet50': functools.partial(resnet.ResNet50, temporal,
                                    block=stm.STMBottleneck if config.temporal == 'stm' else None),
      'i3d': functools.partial(inception3d.Inception3D, separable=False),
      's3d': functools.partial(inception3d.Inception3D, separable=True),
      's3dg': functools.partial(inception3d.Inception3D, separable=True, gating=True),
      'i3d_resnet50': resnet.I3DResNet50,
      'r2plus1d_18': functools.partial(r2plus1d.R2Plus1D, 18),
      'r2plus1d_34': functools.partial(r2plus1d.R2Plus1D, 34),
  }[config.backbone]
  return VideoClassifier(functools.partial(backbone, **common),
                         **_settings(config, 'num_classes', 'dropout', 'consensus',
                                     'trn_feature_dim'))


def frozen_parameters(model_config, params) -> Any:
  """A tree of booleans like `params`: True for the parameters training leaves as they are. With
  `partial_bn` (TSN's partial BatchNorm), the scale and bias of every BatchNorm of the backbone
  after the first; otherwise none."""
  config = checked(model_config)
  first = None
  if config.partial_bn:
    table, _ = inception.load_table(config.backbone)
    first = next(layer.name for layer in table if layer.op == 'conv')

  def frozen(path, _):
    names = [getattr(key, 'key', '') for key in path]
    return bool(first and names[0] == 'backbone' and 'bn' in names[2:-1] and names[1] != first)

  return jax.tree_util.tree_map_with_path(frozen, params)


# model -> {(clip shape, dtype): abstract variables}; dropped with the model.
_ABSTRACT_VARIABLES = weakref.WeakKeyDictionary()


def abstract_variables(model, clips: jax.ShapeDtypeStruct):
  """Shapes and dtypes of the model's variables for `clips`, without allocating them. Traced
  once per model and clip shape: a run asks for them several times (optimizer, state layout,
  checkpoint restore), and each trace of a large model takes about a second."""
  per_model = _ABSTRACT_VARIABLES.setdefault(model, {})
  key = (tuple(clips.shape), jnp.dtype(clips.dtype))
  if key not in per_model:
    per_model[key] = jax.eval_shape(lambda x: model.init({'params': jax.random.key(0)}, x),
                                    clips)
  return per_model[key]


def random_variables(model, clips, seed: int = 0) -> dict:
  """NumPy variables with the structure of `model.init` for `clips` (an array or a
  ShapeDtypeStruct): weights drawn from a normal scaled by 1/sqrt(fan-in), BatchNorm scales
  and variances 1, means and biases 0. For measurements and tests where the values do not
  matter: made on the host in well under a second, where compiling the real initialisers takes
  seconds on CPU (each one's random numbers become code of their own)."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ('scale', 'var'):
      return np.ones(leaf.shape, leaf.dtype)
    if name in ('mean', 'bias'):
      return np.zeros(leaf.shape, leaf.dtype)
    fan_in = max(1, int(np.prod(leaf.shape[:-1])))
    return (rng.normal(size=leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  abstract = abstract_variables(model, jax.ShapeDtypeStruct(clips.shape, clips.dtype))
  return jax.tree_util.tree_map_with_path(draw, abstract)
