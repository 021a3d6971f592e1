"""Writes `tests/data/weights/<file>.json`: every tensor (name, shape, dtype) of each weights
file `train.init_from` can name, read from the network the ORIGINAL code builds to load that
file -- not from this project's layer tables. The tests write a file to each manifest and
convert it (`tests/test_weight_files.py`), so a name this project reads wrongly fails there.

  python -m tools.weight_manifests --gsm=PATH --tsm=PATH --torchvision=PATH

PATH: a checkout (or unpacked release) of each original; the commits these manifests came from:
- swathikirans/GSM 43e8ebad5cf1bf2aaca1674a753a89fcba416321: model_zoo/bninception/
  pytorch_load.py (BNInception, InceptionV3) with bn_inception.yaml / inceptionv3.yaml; the
  file it loads (`weight_url`) after squeezing dim 0 of every tensor, strictly.
- mit-han-lab/temporal-shift-module 1f6a834b02120441d99fa706b7a13ccc5293c6fa: ops/models.py
  TSN (+ ops/temporal_shift.py), wrapped in nn.DataParallel as main.py saves it
  (`{'epoch', 'arch', 'state_dict', 'optimizer', 'best_prec1'}`), with the arguments of
  scripts/train_ts{m,n}_kinetics_rgb_*.sh.
- torchvision 0.29.2 (git f12281517f1b2f6255904639b027c9436f3e5008): models/resnet.py
  resnet50 and models/googlenet.py GoogLeNet(aux_logits=True), as `googlenet(pretrained=True)`
  builds it to load its file strictly.

What the code cannot say, each manifest says in `stored` with its evidence: the Caffe
conversions' BN vectors are `[1, C]` (GSM's loader squeezes dim 0 before a strict load), and
files saved before PyTorch 0.4.1 (2018) have no `num_batches_tracked`.
"""
import argparse
import contextlib
import json
import pathlib
import sys
import tempfile
from unittest import mock

OUT = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'data' / 'weights'
GSM_COMMIT = 'swathikirans/GSM@43e8ebad5cf1bf2aaca1674a753a89fcba416321'
TSM_COMMIT = 'mit-han-lab/temporal-shift-module@1f6a834b02120441d99fa706b7a13ccc5293c6fa'
# GSM's inceptionv3.yaml leaves this mapping open, so no YAML parser reads it; its layer ids are
# those of inceptionv3_gsm.yaml (which GSM's runs use) without the 10 gsm layers.
UNCLOSED = '- {expr: mixed_3_conv<=ReLU<=mixed_3_conv, id: mixed_3_conv\n'
TORCHVISION = 'pytorch/vision@f12281517f1b2f6255904639b027c9436f3e5008 (torchvision 0.29.2)'


def tensors(state_dict, *, bn_rows: bool = False, batches_tracked: bool = True) -> dict:
  """{name: [shape, dtype]} as the file holds them."""
  out = {}
  bn = {k.rsplit('.', 1)[0] for k in state_dict if k.endswith('running_mean')}
  for name, value in state_dict.items():
    if name.endswith('num_batches_tracked') and not batches_tracked:
      continue
    shape = list(value.shape)
    if bn_rows and name.rsplit('.', 1)[0] in bn and len(shape) == 1:
      shape = [1] + shape
    out[name] = [shape, str(value.dtype).removeprefix('torch.')]
  return out


def write(file: str, *, source: str, stored: str, container: str, state_dict: dict) -> None:
  OUT.mkdir(parents=True, exist_ok=True)
  manifest = {'file': file, 'source': source, 'stored': stored, 'container': container,
              'tensors': state_dict}
  (OUT / f'{file}.json').write_text(json.dumps(manifest, indent=0) + '\n')
  print(f'{OUT / file}.json: {len(state_dict)} tensors')


@contextlib.contextmanager
def on_path(path):
  sys.path.insert(0, str(path))
  try:
    yield
  finally:
    sys.path.remove(str(path))


def gsm(root: pathlib.Path, tmp: pathlib.Path) -> None:
  import torch
  import yaml
  load = yaml.load  # GSM calls yaml.load(file), which PyYAML >= 6 refuses without a Loader
  with on_path(root), mock.patch.object(
      yaml, 'load', lambda f, *a, **k: load(f, yaml.SafeLoader)), \
      mock.patch('torch.utils.model_zoo.load_url', lambda url: {}), \
      mock.patch.object(torch.nn.Module, 'load_state_dict', lambda self, *a, **k: None):
    from model_zoo.bninception import pytorch_load
    nets = {
        'bn_inception-9f5701afb96c8044.pth': (pytorch_load.BNInception, 'bn_inception.yaml'),
        'inceptionv3-cuhk-0e09b300b493bc74c.pth': (pytorch_load.InceptionV3,
                                                  'inceptionv3.yaml'),
    }
    for file, (net, table) in nets.items():
      path = root / 'model_zoo' / 'bninception' / table
      text = path.read_text()
      if UNCLOSED in text:  # the one syntax error of inceptionv3.yaml at that commit (line 255)
        path = tmp / table
        path.write_text(text.replace(UNCLOSED, UNCLOSED + '}'))
      model = net(model_path=str(path))
      write(file, source=f'{GSM_COMMIT}: model_zoo/bninception/pytorch_load.py {net.__name__}'
            f' (model_zoo/bninception/{table})',
            stored='BN vectors as [1, C]: pytorch_load.py squeezes dim 0 of every tensor before '
            'its strict load_state_dict; no num_batches_tracked (converted from Caffe)',
            container='state_dict', state_dict=tensors(model.state_dict(), bn_rows=True,
                                                       batches_tracked=False))


def tsm(root: pathlib.Path) -> None:
  import torch
  import torchvision
  resnet50 = torchvision.models.resnet50
  # TSM calls resnet50(pretrained) positionally, as torchvision < 0.13 took it.
  with on_path(root), mock.patch.object(torchvision.models, 'resnet50',
                                        lambda pretrained=False: resnet50()):
    from ops.models import TSN
    files = {
        'TSM_kinetics_RGB_resnet50_avg_segment5_e50.pth': dict(num_segments=5),
        'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth': dict(
            num_segments=8, is_shift=True, shift_div=8, shift_place='blockres'),
        'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth': dict(
            num_segments=16, is_shift=True, shift_div=8, shift_place='blockres'),
    }
    for file, arguments in files.items():
      model = torch.nn.DataParallel(TSN(400, modality='RGB', base_model='resnet50',
                                        consensus_type='avg', dropout=0.5, pretrain='none',
                                        print_spec=False, **arguments))
      write(file, source=f'{TSM_COMMIT}: ops/models.py TSN(400, {arguments}, dropout=0.5) in '
            'nn.DataParallel, saved by main.py save_checkpoint',
            stored='BN vectors as [C] with num_batches_tracked (PyTorch >= 1.0, 2019)',
            container="checkpoint dict; tensors under 'state_dict'",
            state_dict=tensors(model.state_dict()))


def torchvision_nets() -> None:
  import torchvision
  write('resnet50-19c8e357.pth', source=f'{TORCHVISION}: torchvision/models/resnet.py '
        'resnet50()', stored='BN vectors as [C]; no num_batches_tracked (released 2017, '
        'before PyTorch 0.4.1)', container='state_dict',
        state_dict=tensors(torchvision.models.resnet50().state_dict(), batches_tracked=False))
  net = torchvision.models.GoogLeNet(aux_logits=True, init_weights=False)
  write('googlenet-1378be20.pth', source=f'{TORCHVISION}: torchvision/models/googlenet.py '
        'GoogLeNet(aux_logits=True) ("GoogLeNet ported from TensorFlow")',
        stored='BN vectors as [C] with num_batches_tracked (released 2019, torchvision 0.3)',
        container='state_dict', state_dict=tensors(net.state_dict()))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--gsm', type=pathlib.Path, required=True)
  parser.add_argument('--tsm', type=pathlib.Path, required=True)
  parser.add_argument('--torchvision', type=pathlib.Path,
                      help='a folder holding the torchvision package, if not installed')
  args = parser.parse_args()
  if args.torchvision:
    sys.path.insert(0, str(args.torchvision))
  with tempfile.TemporaryDirectory() as tmp:
    gsm(args.gsm.resolve(), pathlib.Path(tmp))
  torchvision_nets()
  tsm(args.tsm.resolve())


if __name__ == '__main__':
  main()
