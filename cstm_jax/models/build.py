"""The one place that maps a `config.model` block to a Flax module, and the named model zoo."""
import dataclasses
import functools
from typing import Any, Mapping, Optional

import jax.numpy as jnp
import ml_collections

from cstm_jax.models import inception, inception3d, r2plus1d, resnet
from cstm_jax.models.video import VideoClassifier
from cstm_jax.temporal import modules as tm
from input_pipeline.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
  crop: int             # native training crop
  test_scale: int       # short side before the centre crop at test time
  is_3d: bool
  colour: str           # 'bgr255' (Caffe Inception nets) or 'rgb_imagenet' (torchvision)


BACKBONES = {
    'bninception': BackboneInfo(224, 256, False, 'bgr255'),
    'inception_v3': BackboneInfo(229, 261, False, 'bgr255'),
    'resnet50': BackboneInfo(224, 256, False, 'rgb_imagenet'),
    'i3d': BackboneInfo(224, 256, True, 'rgb_imagenet'),
    's3d': BackboneInfo(224, 256, True, 'rgb_imagenet'),
    'i3d_resnet50': BackboneInfo(224, 256, True, 'rgb_imagenet'),
    'r2plus1d_18': BackboneInfo(112, 128, True, 'rgb_imagenet'),
    'r2plus1d_34': BackboneInfo(112, 128, True, 'rgb_imagenet'),
}
TEMPORAL_MODULES = ('tsn', 'tsm', 'gsm', '3d_shift_sum', 'gsm_attention', 'cstm')

# Every key a `config.model` block may hold, with its default.
DEFAULTS = {
    'backbone': 'bninception',
    'temporal': 'cstm',        # one of TEMPORAL_MODULES; 'none' for 3D backbones
    'num_classes': 174,
    'num_frames': 8,
    'dropout': 0.5,
    'dtype': 'float32',        # compute dtype; parameters stay float32
    'width': 1.0,              # channel multiplier (tests and the demo use small ones)
    'shift_div': 8,            # shifted channels: C // shift_div each way
    'shift_impl': 'roll',      # 'roll' (masked jnp.roll) or 'slice' (slice + pad)
    'gsm_interleave': True,    # the GSM reference's channel interleave
    'conv3d': 'grouped',       # 3D branch: 'grouped', 'depthwise' or 'full'
    'conv3d_group_width': 16,  # channels per group of the grouped 3D branch
    'cstm_shift': 'tsm',       # shift path inside cstm / 3d_shift_sum: 'tsm' or 'gsm'
    'attention_pool': 'clip',  # cstm attention squeeze: per 'clip' or per 'frame'
}



def model_name(backbone: str, temporal: str) -> str:
  """'cstm_bninception' for a 2D backbone with a temporal module; the backbone name for 3D."""
  return backbone if temporal == 'none' else f'{temporal}_{backbone}'


# Named models: the summary and the benchmark know these.
MODELS = {
    model_name(b, t): {'backbone': b, 'temporal': t}
    for b, temporals in [('bninception', TEMPORAL_MODULES), ('inception_v3', TEMPORAL_MODULES),
                         ('resnet50', ('tsn', 'tsm'))] + [
        (b, ('none',)) for b in ('i3d', 'i3d_resnet50', 's3d', 'r2plus1d_18', 'r2plus1d_34')]
    for t in temporals
}


def check_model_names(names) -> list[str]:
  """`names` if every one is a named model; else a ValueError listing the known names."""
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    raise ConfigError(f'unknown models {unknown}; known models: {", ".join(MODELS)}')
  return list(names)


def model_config(name: str = 'cstm_bninception', **overrides) -> ml_collections.ConfigDict:
  """The full `config.model` block of a named model, with `overrides` applied."""
  check_model_names([name])
  return _checked({**DEFAULTS, **MODELS[name], **overrides})


def _checked(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  unknown = sorted(set(values) - set(DEFAULTS))
  if unknown:
    raise ConfigError(f'unknown model config keys {unknown}; known keys: {sorted(DEFAULTS)}')
  config = ml_collections.ConfigDict({**DEFAULTS, **values})
  if config.backbone not in BACKBONES:
    raise ConfigError(f'unknown backbone {config.backbone!r}; known: {sorted(BACKBONES)}')
  allowed = ('none',) if BACKBONES[config.backbone].is_3d else (
      ('tsn', 'tsm') if config.backbone == 'resnet50' else TEMPORAL_MODULES)
  if config.temporal not in allowed:
    raise ConfigError(f'temporal module {config.temporal!r} does not fit backbone '
                     f'{config.backbone!r}; choose one of {list(allowed)}')
  if config.dtype not in ('float32', 'bfloat16', 'float16'):
    raise ConfigError(f"model dtype {config.dtype!r} is not 'float32', 'bfloat16' or 'float16'")
  return config


def temporal_module(config, dtype) -> Optional[functools.partial]:
  """The temporal module of `config` as a constructor still missing `num_frames`."""
  common = {'shift_impl': config.shift_impl}
  learned = {'dtype': dtype}
  gsm = functools.partial(tm.GateShift, interleave=config.gsm_interleave, **common, **learned)
  cstm = functools.partial(
      tm.CSTM, attention_pool=config.attention_pool, shift=config.cstm_shift,
      shift_div=config.shift_div, gsm_interleave=config.gsm_interleave, conv3d=config.conv3d,
      group_width=config.conv3d_group_width, **common, **learned)
  return {
      'tsn': None,
      'none': None,
      'tsm': functools.partial(tm.TemporalShift, shift_div=config.shift_div, **common),
      'gsm': gsm,
      'gsm_attention': functools.partial(gsm, attention=True),
      '3d_shift_sum': functools.partial(cstm, attention=False),
      'cstm': cstm,
  }[config.temporal]


def build_model(model_config: Mapping[str, Any]) -> VideoClassifier:
  """Returns the Flax module for a `config.model` block (a ConfigDict or a dict).

  Unknown keys are refused; missing keys take `DEFAULTS`. The module maps normalised clips
  `[N, T, H, W, 3]` to logits `[N, num_classes]`; call it with `train=True` for dropout and
  batch statistics (mutable 'batch_stats').
  """
  values = model_config.to_dict() if hasattr(model_config, 'to_dict') else dict(model_config)
  config = _checked(values)
  if config.num_classes < 1:
    raise ConfigError(f'model.num_classes is {config.num_classes}: training takes it from the '
                      'prepared dataset when it is 0; set --config.model.num_classes to build '
                      'the model without a dataset')
  dtype = jnp.dtype(config.dtype)
  common = {'width': config.width, 'dtype': dtype}
  temporal = temporal_module(config, dtype)
  backbone = {
      'bninception': functools.partial(inception.InceptionBackbone, 'bninception', temporal),
      'inception_v3': functools.partial(inception.InceptionBackbone, 'inception_v3', temporal),
      'resnet50': functools.partial(resnet.ResNet50, temporal),
      'i3d': functools.partial(inception3d.Inception3D, separable=False),
      's3d': functools.partial(inception3d.Inception3D, separable=True),
      'i3d_resnet50': resnet.I3DResNet50,
      'r2plus1d_18': functools.partial(r2plus1d.R2Plus1D, 18),
      'r2plus1d_34': functools.partial(r2plus1d.R2Plus1D, 34),
  }[config.backbone]
  return VideoClassifier(functools.partial(backbone, **common), config.num_classes,
                         dropout_rate=config.dropout)
