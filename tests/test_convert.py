"""PyTorch -> Flax weight import: converted reference networks give the same logits; every
mismatch is an error naming the keys; .pth / .safetensors / .npz files read alike."""

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import torch

import torch_reference as ref
from cstm_jax.train import checkpoints
from cstm_jax.models import torch_weights
from cstm_jax.config.defaults import model_config
from cstm_jax.models.build import build_model

FRAMES, WIDTH, CLASSES = 4, 0.25, 10


def reference(name: str) -> torch.nn.Module:
  base = {
      'tsn_bninception': lambda: ref.InceptionBase('bninception', WIDTH, FRAMES),
      'gsm_bninception': lambda: ref.InceptionBase('bninception', WIDTH, FRAMES, gsm=True),
      'tsn_inception_v3': lambda: ref.InceptionBase('inception_v3', WIDTH, FRAMES),
      'tsm_resnet50': lambda: ref.ResNet50(WIDTH, FRAMES),
      'stm_resnet50': lambda: ref.ResNet50(WIDTH, FRAMES, stm=True),
      'trn_bninception': lambda: ref.InceptionBase('bninception', WIDTH, FRAMES),
  }[name]()
  if name == 'trn_bninception':
    return ref.randomise(ref.TRN(base, CLASSES, FRAMES))
  return ref.randomise(ref.TSN(base, CLASSES))


def state_dict(model: torch.nn.Module, prefix: str = 'module.') -> dict:
  """As the released training checkpoints store it (DataParallel's `module.` prefix)."""
  return {prefix + k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize('name,crop', [('tsn_bninception', 128), ('gsm_bninception', 128),
                                       ('tsn_inception_v3', 133), ('tsm_resnet50', 96),
                                       ('stm_resnet50', 96), ('trn_bninception', 128)])
def test_converted_reference_gives_the_same_logits(name, crop):
  torch_model = reference(name)
  clips = torch.randn(2, FRAMES, 3, crop, crop, generator=torch.Generator().manual_seed(1))
  expected = ref.unit_logits(torch_model, clips).numpy()
  config = model_config(name, num_frames=FRAMES, width=WIDTH, num_classes=CLASSES)
  variables, report = torch_weights.convert_state_dict(state_dict(torch_model), config)
  assert not report['dropped_head'] and not report['new_modules']
  assert [rule.split(' (')[0] for rule in report['dropped']] == ['BatchNorm step counts']
  logits = build_model(config).apply(variables, clips.permute(0, 1, 3, 4, 2).numpy())
  assert np.abs(expected).max() > 0.1  # the comparison is not between near-zero numbers
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=0)


def test_imagenet_network_into_cstm_drops_the_head_and_leaves_new_modules():
  torch_model = ref.randomise(ref.TSN(ref.InceptionBase('bninception', WIDTH, FRAMES), 1000))
  weights = {k.replace('base_model.', '').replace('new_fc', 'fc'): v
             for k, v in state_dict(torch_model, '').items()}
  config = model_config('cstm_bninception', num_frames=FRAMES, width=WIDTH, num_classes=174)
  variables, report = torch_weights.convert_state_dict(weights, config)
  assert report['dropped_head'] and 'head' not in variables['params']
  assert 'inception_3a_1x1/temporal' in report['new_modules']
  layer = variables['params']['backbone']['inception_3a_1x1']
  assert 'temporal' not in layer
  np.testing.assert_array_equal(layer['conv']['kernel'],
                                weights['inception_3a_1x1.weight'].transpose(2, 3, 1, 0))
  # init_from merges it into a fresh CSTM model: backbone loaded, temporal modules and head new.
  fresh = jax.eval_shape(build_model(config).init, jax.random.key(0),
                         np.zeros((1, FRAMES, 128, 128, 3), np.float32))  # shapes are enough
  merged, merge_report = checkpoints.merge_pretrained(fresh, variables)
  assert any(k.endswith('inception_3a_1x1/temporal/conv3d/kernel') for k in merge_report['missing'])
  assert 'params/backbone/conv1_7x7_s2/conv/kernel' in merge_report['loaded']


@pytest.mark.parametrize('name, base, crop, new_module', [
    ('stm_resnet50', lambda: ref.ResNet50(WIDTH), 96, 'layer1_0/motion'),
    ('trn_bninception', lambda: ref.InceptionBase('bninception', WIDTH, FRAMES), 128,
     'trn/relation4'),
])
def test_imagenet_network_into_stm_or_trn_leaves_their_parts_new(name, base, crop, new_module):
  """STM and TRN train from ImageNet networks (torchvision's ResNet-50, TSN's BN-Inception):
  the backbone converts, STM's parts and TRN's relations start fresh, and init_from merges."""
  torch_model = ref.randomise(ref.TSN(base(), 1000))
  weights = {k.replace('base_model.', '').replace('new_fc', 'fc'): v
             for k, v in state_dict(torch_model, '').items()}
  config = model_config(name, num_frames=FRAMES, width=WIDTH, num_classes=174)
  variables, report = torch_weights.convert_state_dict(weights, config)
  assert report['dropped_head'] and new_module in report['new_modules']
  fresh = jax.eval_shape(build_model(config).init, jax.random.key(0),
                         np.zeros((1, FRAMES, crop, crop, 3), np.float32))
  _, merge_report = checkpoints.merge_pretrained(fresh, variables)
  assert merge_report['loaded'] and merge_report['missing']
  assert 'params/backbone/conv1/conv/kernel' in merge_report['loaded'] or (
      'params/backbone/conv1_7x7_s2/conv/kernel' in merge_report['loaded'])


def test_mismatches_are_errors_that_name_the_keys():
  weights = state_dict(reference('tsm_resnet50'))
  config = model_config('tsm_resnet50', num_frames=FRAMES, width=WIDTH, num_classes=CLASSES)
  missing = {k: v for k, v in weights.items() if k != 'module.base_model.layer2.1.bn2.weight'}
  with pytest.raises(ValueError, match=r'1 missing: layer2\.1\.bn2\.weight'):
    torch_weights.from_torch(missing, config)
  with pytest.raises(ValueError, match=r'1 unexpected: .*layer5\.0\.conv1\.weight'):
    torch_weights.from_torch({**weights, 'layer5.0.conv1.weight': np.zeros((4, 4, 1, 1))}, config)
  wider = model_config('tsm_resnet50', num_frames=FRAMES, width=0.5, num_classes=CLASSES)
  with pytest.raises(ValueError, match=r'wrong shapes: .*conv1\.weight'):
    torch_weights.from_torch(weights, wider)
  with pytest.raises(ValueError, match='no PyTorch layout for backbone'):
    torch_weights.from_torch(weights, model_config('r2plus1d_18'))


def test_weight_files_read_alike_and_code_in_a_pickle_is_refused(tmp_path):
  weights = {'conv1.weight': np.random.default_rng(0).normal(size=(8, 3, 7, 7)).astype('f4'),
             'bn1.running_var': np.ones(8, np.float32)}
  torch.save({'epoch': 3, 'state_dict': {k: torch.from_numpy(v) for k, v in weights.items()}},
             tmp_path / 'ckpt.pth.tar')
  np.savez(tmp_path / 'w.npz', **weights)
  safetensors.numpy.save_file(weights, tmp_path / 'w.safetensors')
  # Half-precision files (as Hugging Face often ships them) give float32 parameters.
  safetensors.numpy.save_file({'conv1.weight': weights['conv1.weight'].astype(ml_dtypes.bfloat16),
                               'bn1.running_var': weights['bn1.running_var'].astype(np.float16)},
                              tmp_path / 'half.safetensors')
  for name in ('ckpt.pth.tar', 'w.npz', 'w.safetensors', 'half.safetensors'):
    loaded = torch_weights.load_state_dict(tmp_path / name)
    assert sorted(loaded) == sorted(weights), name
    tolerance = 2 ** -8 if name == 'half.safetensors' else 0
    for key in weights:
      assert loaded[key].dtype == np.float32, (name, key)
      np.testing.assert_allclose(loaded[key], weights[key], rtol=tolerance)
  torch.save({'model': torch.nn.Linear(2, 2)}, tmp_path / 'pickled_module.pth')
  with pytest.raises(ValueError, match='pickled_module.pth: not a plain PyTorch state dict'):
    torch_weights.load_state_dict(tmp_path / 'pickled_module.pth')
  (tmp_path / 'w.h5').write_bytes(b'')
  with pytest.raises(ValueError, match=r"w\.h5: unknown weights format '\.h5'"):
    torch_weights.load_state_dict(tmp_path / 'w.h5')
