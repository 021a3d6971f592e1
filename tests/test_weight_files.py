"""Every file `train.init_from` names, written to its manifest and converted as a run converts
it (`pretrained.convert_file`).

A manifest (`tests/data/weights/<file>.json`, written by `tools/weight_manifests.py`) lists each
tensor of a file -- name, shape, dtype -- as the ORIGINAL code that loads the file builds its
network (GSM's model_zoo, torchvision's resnet.py / googlenet.py, TSM's ops/models.py), with
how the file stores what the code cannot say (Caffe BN vectors as [1, C], num_batches_tracked).
The tests here then hold this project's reading against those facts:
- every tensor is converted or left out by a rule with a name (`torch_weights.DROP_RULES`);
- the converted variables load into the model a run builds, leaving only its new modules;
- the converted network computes what a PyTorch network computes after loading the same file
  the way the original loads it (strictly, with the original's own key handling);
- an inflated 3D net gives its 2D source's features on a clip of one frame repeated.
"""
import glob
import hashlib
import importlib
import json
import pathlib

import jax
import numpy as np
import pytest
import torch

import torch_reference as ref
from cstm_jax.config import zoo
from cstm_jax.config.defaults import model_config
from cstm_jax.models import torch_weights
from cstm_jax.models.build import abstract_variables, build_model
from cstm_jax.train import checkpoints, pretrained

MANIFESTS = pathlib.Path(__file__).parent / 'data' / 'weights'
# Each file -> the models of the paper's table (and their 3D inflations) that start from it.
TARGETS = {
    'bn_inception-9f5701afb96c8044.pth': ('tsn_bninception', 'cstm_bninception',
                                          'gsm_bninception', 'trn_bninception'),
    'inceptionv3-cuhk-0e09b300b493bc74c.pth': ('tsn_inception_v3', 'cstm_inception_v3'),
    'resnet50-19c8e357.pth': ('tsn_resnet50', 'stm_resnet50', 'i3d_resnet50'),
    'googlenet-1378be20.pth': ('i3d', 's3d', 's3dg'),
    'TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth': ('tsn_resnet50',),
    'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth': ('tsm_resnet50',),
    'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth': ('tsm_resnet50',),
}
FRAMES = {'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth': 16}
# The head each file carries, under its own name.
HEADS = {'inceptionv3-cuhk-0e09b300b493bc74c.pth': 'top_cls_fc.',
         'TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth': 'module.new_fc.',
         'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth': 'module.new_fc.',
         'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth': 'module.new_fc.'}


def manifest(file: str) -> dict:
  return json.loads((MANIFESTS / f'{file}.json').read_text())


def write_file(file: str, folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A file laid out as `file`'s manifest says (names, shapes, dtypes, container), holding
  random weights at He scale and random BatchNorm statistics."""
  facts = manifest(file)
  generator = torch.Generator().manual_seed(seed)
  bn = {name.rsplit('.', 1)[0] for name in facts['tensors'] if name.endswith('running_mean')}
  tensors = {}
  for name, (shape, dtype) in facts['tensors'].items():
    if dtype == 'int64':
      tensors[name] = torch.tensor(1000, dtype=torch.int64).reshape(shape)
    elif name.rsplit('.', 1)[0] in bn:
      scale = name.endswith(('.weight', '.running_var'))
      tensors[name] = (torch.rand(shape, generator=generator) + 0.5 if scale
                       else torch.randn(shape, generator=generator) * 0.1)
    elif len(shape) >= 2:
      fan_in = int(np.prod(shape[1:]))
      tensors[name] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    else:
      tensors[name] = torch.randn(shape, generator=generator) * 0.1
  path = folder / file
  if facts['container'].startswith('checkpoint'):  # TSM main.py's save_checkpoint
    torch.save({'epoch': 50, 'arch': 'resnet50', 'state_dict': tensors,
                'optimizer': {'state': {}, 'param_groups': []}, 'best_prec1': 70.0}, path)
  else:
    torch.save(tensors, path)
  return path


def block(name: str, file: str, **overrides) -> dict:
  """The full-size model block a run of `name` converts `file` for (no head)."""
  frames = FRAMES.get(file, 8)
  return model_config(name, **{'num_frames': frames, 'num_classes': 0, 'dtype': 'float32',
                               **overrides}).to_dict()


def test_every_file_init_from_names_has_a_manifest_and_targets():
  named = {w.file for w in pretrained.IMAGENET_WEIGHTS.values()} | {
      w.file for w in pretrained.KINETICS_WEIGHTS.values()}
  assert named == set(TARGETS) == {p.name.removesuffix('.json') for p in MANIFESTS.glob('*.json')}
  for file in named:
    facts = manifest(file)
    assert '@' in facts['source'] and facts['stored'], file  # each names its origin and commit


@pytest.mark.parametrize('file, name', [(f, n) for f, names in TARGETS.items() for n in names])
def test_every_tensor_is_converted_or_left_out_by_a_named_rule(file, name, tmp_path):
  path = write_file(file, tmp_path)
  variables, report = pretrained.convert_file(path, block(name, file))
  stored = {torch_weights.normalise_key(k) for k in manifest(file)['tensors']}
  dropped = {k for keys in report['dropped'].values() for k in keys}
  assert stored == set(report['converted']) | dropped
  assert not set(report['converted']) & dropped
  assert report['dropped_head']  # every file's classifier is another task's
  for rule in report['dropped']:
    assert rule in torch_weights.DROP_RULES
  # The result loads into the model a run builds: only heads and new modules start fresh.
  model_block = {**block(name, file), 'num_classes': 5}
  crop = zoo.BACKBONES[model_block['backbone']].crop
  fresh = abstract_variables(build_model(model_block), jax.ShapeDtypeStruct(
      (1, model_block['num_frames'], crop, crop, 3), np.float32))
  _, merge = checkpoints.merge_pretrained(fresh, variables)
  assert merge['loaded'] and not merge['mismatched']


def test_inception_v3_head_is_gsm_top_cls_fc_and_left_out_by_its_rule(tmp_path):
  """GSM's model_zoo names Inception v3's ImageNet head `top_cls_fc` (inceptionv3.yaml;
  models.py sets `last_layer_name = 'top_cls_fc'`)."""
  file = 'inceptionv3-cuhk-0e09b300b493bc74c.pth'
  assert {'top_cls_fc.weight', 'top_cls_fc.bias'} <= set(manifest(file)['tensors'])
  _, report = pretrained.convert_file(write_file(file, tmp_path), block('tsn_inception_v3', file))
  (rule,) = [r for r, keys in report['dropped'].items() if 'fc.weight' in keys]
  assert 'top_cls_fc' in rule


def test_a_mismatch_names_the_file_and_the_real_class_count(tmp_path):
  file = 'resnet50-19c8e357.pth'
  path = write_file(file, tmp_path)
  with pytest.raises(Exception, match=rf'{path}: the weights do not fit resnet50 / tsn \(width '
                     r'0\.5, no head \(classes from the dataset\)\): .*wrong shapes'):
    pretrained.convert_file(path, block('tsn_resnet50', file, width=0.5))
  state = torch_weights.load_state_dict(path)
  with pytest.raises(Exception, match=r'\(width 1\.0, 174 classes\): 1 missing: conv1\.weight'):
    torch_weights.convert_state_dict({k: v for k, v in state.items() if k != 'conv1.weight'},
                                     block('tsn_resnet50', file, num_classes=174))


# --- The converted network against PyTorch, each file loaded as its original loads it -----------

def gsm_load(state: dict, head: str) -> dict:
  """GSM's pytorch_load.py: every tensor squeezed at dim 0; TSN/GSM then replace the head
  (`last_layer_name`) by dropout, so the base network keeps no head."""
  return {k: torch.squeeze(torch.as_tensor(v), dim=0) for k, v in state.items()
          if not k.startswith(head)}


def tsm_load(checkpoint: dict) -> dict:
  """TSM's test_models.py: the DataParallel prefix dropped from each name."""
  return {'.'.join(k.split('.')[1:]): v for k, v in checkpoint['state_dict'].items()}


def loaded(model: torch.nn.Module, state: dict) -> torch.nn.Module:
  """`model` holding `state`, loaded strictly (an unknown or missing name fails), in eval mode."""
  model.load_state_dict(state, strict=True)
  return model.eval()


def our_features(name: str, file: str, variables: dict, clips: np.ndarray) -> np.ndarray:
  """The converted backbone's features: per frame for 2D nets, per step for 3D ones."""
  backbone = build_model({**block(name, file), 'num_classes': 1}).backbone()
  return np.asarray(backbone.apply({'params': variables['params']['backbone'],
                                    'batch_stats': variables['batch_stats']['backbone']},
                                   clips))


@pytest.mark.parametrize('file, name, crop, reference', [
    ('bn_inception-9f5701afb96c8044.pth', 'tsn_bninception', 224,
     lambda state: loaded(ref.InceptionBase('bninception', 1.0, 8), gsm_load(state, 'fc.'))),
    ('inceptionv3-cuhk-0e09b300b493bc74c.pth', 'tsn_inception_v3', 229,
     lambda state: loaded(ref.InceptionBase('inception_v3', 1.0, 8),
                          gsm_load(state, 'top_cls_fc.'))),
    ('resnet50-19c8e357.pth', 'tsn_resnet50', 64,
     lambda state: loaded(ref.ResNet50(1.0),
                          {k: v for k, v in state.items() if not k.startswith('fc.')})),
    ('TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth', 'tsm_resnet50', 64,
     lambda state: loaded(ref.TSN(ref.ResNet50(1.0, 16), 400), tsm_load(state)).base_model),
])
def test_the_converted_network_computes_what_the_original_loading_the_file_computes(
    file, name, crop, reference, tmp_path):
  path = write_file(file, tmp_path)
  state = torch.load(path, weights_only=True)
  model = reference(state)
  variables, _ = pretrained.convert_file(path, block(name, file))
  frames = FRAMES.get(file, 8)
  clips = np.random.default_rng(0).normal(size=(1, frames, crop, crop, 3)).astype(np.float32)
  with torch.no_grad():
    expected = model(torch.from_numpy(clips[0]).permute(0, 3, 1, 2)).numpy()
  ours = our_features(name, file, variables, clips)[0]
  assert np.abs(expected).max() > 0.1
  np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-5 * np.abs(expected).max())


# --- Inflated 3D nets against their 2D source -------------------------------------------------

# Steps of the 3D output whose temporal receptive field holds no zero-padded frame:
# - I3D / S3D(-G) (TF 'SAME' padding): 99 frames wide at a stride of 8 (conv1 7/2, Conv3d_2c 3,
#   Mixed_3b-c 3 each, pool 3/2, Mixed_4b-f 3 each, pool 2/2, Mixed_5b-c 3 each), so of the 16
#   steps of a 128-frame clip, steps 6-9 (frames 8i + 3.5 +- 49 within 0..127);
# - I3D-ResNet-50 (PyTorchVideo i3d_r50): step u of a 48-frame clip sees frames 2u - 17 ..
#   2u + 18 (stem 5, res2 3 x 3, temporal pool 2/2, res3-res5's 3 x 1 x 1 convs), so 9-14.
UNTOUCHED = {'i3d': (128, range(6, 10)), 's3d': (128, range(6, 10)),
             's3dg': (128, range(6, 10)), 'i3d_resnet50': (48, range(9, 15))}


@pytest.mark.parametrize('name, file, size', [
    ('i3d', 'googlenet-1378be20.pth', 63), ('s3d', 'googlenet-1378be20.pth', 63),
    ('s3dg', 'googlenet-1378be20.pth', 63), ('i3d_resnet50', 'resnet50-19c8e357.pth', 64)])
def test_an_inflated_3d_net_gives_its_2d_source_features_on_a_static_clip(name, file, size,
                                                                         tmp_path):
  """A clip of one frame repeated: the inflated net's steps that temporal padding does not
  reach give the 2D network's features for that frame (the 2D network is torchvision's,
  loaded strictly from the same file). I3D's kernels are the 2D ones repeated and divided by
  their temporal size; S3D's spatial halves are the 2D kernels and its temporal halves start as
  the identity. The GoogLeNet frame is 63 px: at sizes 2m + 1 with m + 1 a multiple of 8,
  torchvision's padding (3 on each side of the 7x7 stem, ceil-mode pools) and TF's 'SAME'
  (which the 3D nets use, as their TF originals do) pick the same pixels; at 224 px the stem
  differs by one pixel. S3D-G's gates are opened (sigmoid ~ 1) here: a run starts them at
  TF-Slim's initialisation, about 0.5."""
  frames, steps = UNTOUCHED[name]
  path = write_file(file, tmp_path)
  state = torch.load(path, weights_only=True)
  source = (loaded(ref.GoogLeNet(), state) if file.startswith('googlenet') else
            loaded(ref.ResNet50(1.0), {k: v for k, v in state.items() if not k.startswith('fc.')}))
  frame = np.random.default_rng(0).normal(size=(size, size, 3)).astype(np.float32)
  with torch.no_grad():
    expected = source(torch.from_numpy(frame).permute(2, 0, 1)[None]).numpy()[0]
  variables, report = pretrained.convert_file(path, block(name, file, num_frames=frames))
  if name == 's3d':
    assert 'Conv3d_1a_7x7/conv_t' in report['identity']
  if name == 's3dg':  # the gates are new modules: add them, open
    backbone = variables['params']['backbone']
    for unit, params in list(backbone.items()):
      if unit == 'Conv3d_2c_3x3' or unit.rsplit('_', 1)[-1] in ('b0', 'b1b', 'b2b', 'b3b'):
        channels = params['conv_t' if 'conv_t' in params else 'conv']['bn']['scale'].shape[0]
        backbone[f'{unit}_gating'] = {'gate': {
            'kernel': np.zeros((channels, channels), np.float32),
            'bias': np.full(channels, 30.0, np.float32)}}
  clip = np.broadcast_to(frame, (1, frames, size, size, 3))
  ours = our_features(name, file, variables, clip)[0]
  assert np.abs(expected).max() > 0.1
  tolerance = 2e-5 * np.abs(expected).max()
  for step in steps:
    np.testing.assert_allclose(ours[step], expected, rtol=0, atol=tolerance, err_msg=f'step {step}')
  # Padding does reach the first step: the bound above is the receptive field, not slack.
  assert np.abs(ours[0] - expected).max() > 100 * tolerance


# --- Each configured start, fetched by name -----------------------------------------------------

def test_each_configured_start_is_fetched_from_a_server_and_loads_into_its_model(
    server, tmp_path, monkeypatch):
  """Every experiment config's `init_from`, run as `loop.initial_state` runs it: its file (here
  written to its manifest, full size) fetched from a web server on loopback, checked, converted
  and merged into the config's model, only heads and new modules left to initialise."""
  folder, url, requested = server
  monkeypatch.setenv('CSTM_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('CSTM_WEIGHTS_MIRROR', raising=False)
  configs = {}
  for path in sorted(glob.glob('configs/[!_]*.py')):
    config = importlib.import_module(f'configs.{pathlib.Path(path).stem}').get_config()
    if config.train.init_from in pretrained.STARTS:
      configs[path] = config
  served = {}
  for table in (pretrained.IMAGENET_WEIGHTS, pretrained.KINETICS_WEIGHTS):
    for key, weights in list(table.items()):
      if weights.file not in served:
        path = write_file(weights.file, folder)
        if weights.sha256_prefix:  # a name carrying the file's own hash, as the real one does
          digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
          path = path.rename(folder / weights.file.replace(weights.sha256_prefix, digest))
        served[weights.file] = path.name
      monkeypatch.setitem(table, key, pretrained.Weights(f'{url}/{served[weights.file]}',
                                                         weights.source))
  # The rows issue 45's configs will add start here too: TSN-ResNet-50, TSM-ResNet-50 at 16.
  starts = [(path, config.train.init_from, config.model) for path, config in configs.items()]
  starts += [(f'{name} at {frames} frames', 'kinetics', model_config(
      name, num_frames=frames, num_classes=174)) for name, frames in (('tsn_resnet50', 8),
                                                                       ('tsm_resnet50', 16))]
  for where, init_from, model in starts:
    variables = pretrained.starting_variables(init_from, model)
    model = {**model.to_dict(), 'dtype': 'float32', 'num_classes': model.num_classes or 10}
    crop = zoo.BACKBONES[model['backbone']].crop
    fresh = abstract_variables(build_model(model), jax.ShapeDtypeStruct(
        (1, model['num_frames'], crop, crop, 3), np.float32))
    _, merge = checkpoints.merge_pretrained(fresh, variables, source=where)
    assert merge['loaded'] and not merge['mismatched'], where
  assert sorted(requested) == sorted(f'/{name}' for name in served.values())  # once each
  assert len(configs) >= 25
