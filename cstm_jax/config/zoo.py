"""Facts about the models, importable without JAX: the backbones, which temporal modules each
takes, and the named models.

Configs read this file (to set a backbone's crop and test scale); `models/build.py`
maps a `config.model` block to a Flax module using it.
"""
import dataclasses

from cstm_foundation.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class BackboneInfo:
  """What a backbone expects of its input.

  Attributes:
    crop: native training crop (pixels).
    test_scale: short side the frames are resized to before the centre crop at test time.
    is_3d: a 3D CNN (no 2D temporal module; `temporal` is 'none').
    input_norm: how its input is normalised: 'bgr255' (Caffe Inception nets: BGR 0-255 minus
      the mean), 'rgb_imagenet' (torchvision nets: RGB ImageNet mean and std) or 'rgb_pm1'
      (RGB in [-1, 1]: the Inception-v1 3D nets, as TF's I3D / S3D and the GoogLeNet weights
      they inflate take it).
  """
  crop: int
  test_scale: int
  is_3d: bool
  input_norm: str


BACKBONES = {
    'bninception': BackboneInfo(224, 256, False, 'bgr255'),
    'inception_v3': BackboneInfo(229, 261, False, 'bgr255'),
    'resnet50': BackboneInfo(224, 256, False, 'rgb_imagenet'),
    'i3d': BackboneInfo(224, 256, True, 'rgb_pm1'),
    'i3d_resnet50': BackboneInfo(224, 256, True, 'rgb_imagenet'),
    's3d': BackboneInfo(224, 256, True, 'rgb_pm1'),
    's3dg': BackboneInfo(224, 256, True, 'rgb_pm1'),
    'r2plus1d_18': BackboneInfo(112, 128, True, 'rgb_imagenet'),
    'r2plus1d_34': BackboneInfo(112, 128, True, 'rgb_imagenet'),
}
TEMPORAL_MODULES = ('tsn', 'tsm', 'gsm', '3d_shift_sum', 'gsm_attention', 'cstm')
# ResNet-50 takes TSN, TSM and STM's blocks (channel-wise temporal conv and motion module, in
# place of each bottleneck's 3x3 conv; not this project's CSTM).
RESNET_TEMPORAL_MODULES = ('tsn', 'tsm', 'stm')
# How per-frame features become clip logits: TSN's mean of per-frame logits, or TRN's
# multi-scale temporal relations (2D backbones without a temporal module).
CONSENSUS = ('average', 'trn_multiscale')


def temporal_modules(backbone: str) -> tuple[str, ...]:
  """The `temporal` values `backbone` takes: 'none' for 3D nets; TSN, TSM, STM on ResNet-50."""
  if BACKBONES[backbone].is_3d:
    return ('none',)
  return RESNET_TEMPORAL_MODULES if backbone == 'resnet50' else TEMPORAL_MODULES


def model_name(backbone: str, temporal: str, consensus: str = 'average') -> str:
  """'cstm_bninception' for a 2D backbone with a temporal module, 'trn_bninception' with TRN's
  relations; the backbone name for 3D."""
  if consensus == 'trn_multiscale':
    return f'trn_{backbone}'
  return backbone if temporal == 'none' else f'{temporal}_{backbone}'


def name_of(model_config) -> str:
  """The model name of a `config.model` block (one written before `consensus` existed too)."""
  return model_name(model_config['backbone'], model_config['temporal'],
                    model_config.get('consensus', 'average'))


# Named models -> their backbone, temporal module and (where not the average) consensus.
MODELS = {model_name(b, t): {'backbone': b, 'temporal': t}
          for b in BACKBONES for t in temporal_modules(b)}
MODELS['trn_bninception'] = {'backbone': 'bninception', 'temporal': 'tsn',
                             'consensus': 'trn_multiscale'}


def check_model_names(names) -> list[str]:
  """`names` if every one is a named model; else a ConfigError listing the known names."""
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    raise ConfigError(f'unknown models {unknown}; known models: {", ".join(MODELS)}')
  return list(names)
