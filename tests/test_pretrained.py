"""Starting weights by name (`train.init_from=imagenet` / `kinetics`), fetched from a real HTTP
server on loopback: downloaded once, checked (by the hash in the name, or the size and digest
recorded at the first download), converted once, reused; a failed fetch or a wrong file is one
line naming the file, the URL, the cache and the mirror variable; a run that cannot get them
stops before its first compile."""
import glob
import hashlib
import importlib
import json
import logging
import pathlib
import shutil
import socket

import jax
import numpy as np
import pytest
import torch

import torch_reference as ref
from configs import ssv2_8f, ssv2_s3d, ssv2_tsm_resnet50
from cstm_foundation.errors import BadFile, ConfigError, MissingFile
from cstm_jax.train import checkpoints, experiment, loop, pretrained
from runs import built, smoke


@pytest.fixture
def smoke_config():
  return ssv2_8f.get_config('smoke')  # CSTM on BN-Inception at width 0.125, 4 frames


def imagenet_file(folder, config, name='bn_inception') -> str:
  """TSN's ImageNet BN-Inception at the config's width, saved as PyTorch saves it, under a
  name that carries the start of its SHA-256 (as the real file's does)."""
  model = ref.randomise(ref.TSN(ref.InceptionBase('bninception', config.model.width,
                                                  config.model.num_frames), 1000))
  weights = {k.replace('base_model.', '').replace('new_fc', 'fc'): v
             for k, v in model.state_dict().items()}
  torch.save(weights, folder / 'tmp.pth')
  digest = hashlib.sha256((folder / 'tmp.pth').read_bytes()).hexdigest()
  file = f'{name}-{digest[:16]}.pth'
  (folder / 'tmp.pth').rename(folder / file)
  return file


@pytest.fixture
def served_weights(server, smoke_config, tmp_path, monkeypatch):
  folder, url, requested = server
  file = imagenet_file(folder, smoke_config)
  monkeypatch.setitem(pretrained.IMAGENET_WEIGHTS, 'bninception',
                      pretrained.Weights(f'{url}/{file}', 'a test server'))
  monkeypatch.setenv('CSTM_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('CSTM_WEIGHTS_MIRROR', raising=False)
  return folder, file, requested


def test_downloaded_once_checked_converted_once_and_reused(served_weights, smoke_config,
                                                           tmp_path):
  folder, file, requested = served_weights
  first = pretrained.starting_variables('imagenet', smoke_config.model)
  assert requested == [f'/{file}']
  assert (tmp_path / 'cache' / 'weights' / file).read_bytes() == (folder / file).read_bytes()
  (converted,) = (tmp_path / 'cache' / 'converted').glob('*.npz')
  again = pretrained.starting_variables('imagenet', smoke_config.model)
  assert requested == [f'/{file}']  # the second run used the conversion
  state_dict = torch.load(folder / file, weights_only=True)
  kernel = first['params']['backbone']['conv1_7x7_s2']['conv']['kernel']
  np.testing.assert_array_equal(kernel, state_dict['conv1_7x7_s2.weight'].numpy().transpose(
      2, 3, 1, 0))
  np.testing.assert_array_equal(again['params']['backbone']['conv1_7x7_s2']['conv']['kernel'],
                                kernel)
  assert 'head' not in first['params']  # the ImageNet head is dropped
  # Without the conversion, the cached download is converted again without a request.
  converted.unlink()
  pretrained.starting_variables('imagenet', smoke_config.model)
  assert requested == [f'/{file}']


def test_a_missing_file_a_truncated_file_and_a_wrong_hash_are_one_line_each(
    served_weights, smoke_config, tmp_path, monkeypatch):
  folder, file, _ = served_weights
  target = tmp_path / 'cache' / 'weights' / file
  weights = pretrained.IMAGENET_WEIGHTS['bninception']
  data = (folder / file).read_bytes()
  (folder / file).unlink()  # the server answers 404
  with pytest.raises(MissingFile) as error:
    pretrained.starting_variables('imagenet', smoke_config.model)
  message = str(error.value)
  assert message.startswith(f'{weights.url}: the ImageNet weights {file} could not be fetched (')
  assert f'download {weights.url} by hand into {target}' in message and '\n' not in message
  assert 'CSTM_WEIGHTS_MIRROR' in message
  (folder / file).write_bytes(data[:len(data) // 2])  # cut short
  with pytest.raises(BadFile, match=f'{weights.url}: the file fetched has SHA-256 [0-9a-f]{{16}}'
                     f'\\.\\.\\., not {weights.sha256_prefix}\\.\\.\\. as its name says'):
    pretrained.starting_variables('imagenet', smoke_config.model)
  assert not target.exists() and not list(target.parent.glob('.*'))  # nothing partial is left
  # A cached file that does not match is fetched again, whole this time.
  target.write_bytes(b'not the weights')
  (folder / file).write_bytes(data)
  pretrained.starting_variables('imagenet', smoke_config.model)
  assert target.read_bytes() == data


def test_a_mirror_folder_replaces_the_url(served_weights, smoke_config, tmp_path, monkeypatch):
  folder, file, requested = served_weights
  mirror = tmp_path / 'mirror'
  mirror.mkdir()
  shutil.copy(folder / file, mirror / file)
  monkeypatch.setenv('CSTM_WEIGHTS_MIRROR', str(mirror))
  pretrained.starting_variables('imagenet', smoke_config.model)
  assert requested == []


def test_a_run_starts_from_them_and_says_so(served_weights, smoke_config, tmp_path, caplog):
  folder, file, _ = served_weights
  smoke_config.model.num_classes = 12
  smoke_config.train.init_from = 'imagenet'
  program = built(smoke_config)
  with caplog.at_level(logging.INFO):
    state, start = loop.initial_state(program, run_checkpoints=checkpoints.RunCheckpoints(
        tmp_path / 'run'), train_iterator=None)
  assert start == 0
  assert f'Initialised from the ImageNet weights {file}' in caplog.text
  state_dict = torch.load(folder / file, weights_only=True)
  np.testing.assert_array_equal(
      np.asarray(state.params['backbone']['inception_3a_1x1']['conv']['kernel']),
      state_dict['inception_3a_1x1.weight'].numpy().transpose(2, 3, 1, 0))


def test_scratch_is_said_in_one_line(smoke_config, tmp_path, caplog):
  smoke_config.model.num_classes = 12
  assert smoke_config.train.init_from == 'scratch'
  with caplog.at_level(logging.WARNING):
    loop.initial_state(built(smoke_config), run_checkpoints=checkpoints.RunCheckpoints(
        tmp_path / 'run'), train_iterator=None)
  assert [r.getMessage() for r in caplog.records] == [
      'train.init_from=scratch: the backbone starts from random weights (the papers\' numbers '
      'start from ImageNet weights: --config.train.init_from=imagenet)']


@pytest.fixture
def compiles():
  """The XLA compilations this test runs (`jax.monitoring`'s backend compile events)."""
  events = []
  listener = lambda name, duration, **kwargs: events.append(name) if (
      name == '/jax/core/compile/backend_compile_duration') else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  yield events
  jax.monitoring.unregister_event_duration_listener(listener)


def closed_port_url(file: str) -> str:
  """A URL on loopback where nothing listens: a connection is refused, as offline."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  return f'http://127.0.0.1:{port}/{file}'


@pytest.mark.parametrize('init_from, module, frames', [
    ('imagenet', ssv2_8f, 4), ('imagenet', ssv2_s3d, 8), ('kinetics', ssv2_tsm_resnet50, 8)])
def test_offline_with_nothing_cached_a_run_stops_before_its_first_compile_in_one_line(
    init_from, module, frames, prepared_ssv2, tmp_path, monkeypatch, compiles):
  config = smoke(module, prepared_ssv2[0], train__init_from=init_from, model__num_frames=frames)
  weights = pretrained.weights_for(init_from, config.model)
  table = pretrained.IMAGENET_WEIGHTS if init_from == 'imagenet' else pretrained.KINETICS_WEIGHTS
  offline = pretrained.Weights(closed_port_url(weights.file), weights.source)
  for key in [k for k, v in table.items() if v == weights]:
    monkeypatch.setitem(table, key, offline)
  monkeypatch.setenv('CSTM_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('CSTM_WEIGHTS_MIRROR', raising=False)
  with pytest.raises(MissingFile) as error:
    experiment.run(config, tmp_path / 'run')
  message = str(error.value)
  target = tmp_path / 'cache' / 'weights' / weights.file
  assert '\n' not in message and message.startswith(f'{offline.url}: the ')
  for said in (weights.file, offline.url, str(target), 'CSTM_WEIGHTS_MIRROR'):
    assert said in message
  assert compiles == []  # stopped before the first compile
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists()


def test_kinetics_starts_load_tsm_release_whole_but_its_head(server, tmp_path, monkeypatch,
                                                             caplog):
  """TSM's checkpoint (`module.base_model.*` with `.net` shifted convs, `module.new_fc` for 400
  classes, inside main.py's checkpoint dict): fetched by name, its size and digest recorded,
  converted without the head (as `--tune_from` leaves `fc` out for a new dataset), and a
  changed file refused by name."""
  folder, url, requested = server
  torch_model = ref.randomise(ref.TSN(ref.ResNet50(0.125, 8), 400))
  file = 'TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth'
  torch.save({'epoch': 50, 'arch': 'resnet50', 'best_prec1': 70.0,
              'state_dict': {f'module.{k}': v for k, v in torch_model.state_dict().items()}},
             folder / file)
  monkeypatch.setitem(pretrained.KINETICS_WEIGHTS, ('tsm', 8),
                      pretrained.Weights(f'{url}/{file}', 'a test server'))
  monkeypatch.setenv('CSTM_CACHE', str(tmp_path / 'cache'))
  monkeypatch.delenv('CSTM_WEIGHTS_MIRROR', raising=False)
  config = ssv2_tsm_resnet50.get_config('smoke')
  config.model.num_frames = 8
  with caplog.at_level(logging.INFO):
    variables = pretrained.starting_variables('kinetics', config.model)
  assert requested == [f'/{file}'] and 'head' not in variables['params']
  record = json.loads((tmp_path / 'cache' / 'weights' / f'{file}.sha256').read_text())
  data = (folder / file).read_bytes()
  assert record == {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest()}
  assert 'left out 1 tensors' not in caplog.text and 'the head of the weights' in caplog.text
  np.testing.assert_array_equal(
      variables['params']['backbone']['layer1_0']['conv1']['conv']['kernel'],
      torch_model.state_dict()['base_model.layer1.0.conv1.net.weight'].numpy().transpose(
          2, 3, 1, 0))
  # A cached file that no longer matches its record is fetched again; a server whose file
  # changed since the first download is refused in one line, and nothing is converted.
  shutil.rmtree(tmp_path / 'cache' / 'converted')
  (tmp_path / 'cache' / 'weights' / file).write_bytes(data[:100])
  (folder / file).write_bytes(data[:-1])
  with pytest.raises(BadFile, match=rf'{url}/{file}: the file fetched has {len(data) - 1} bytes '
                     rf'and SHA-256 [0-9a-f]{{16}}\.\.\., not the {len(data)} bytes .* recorded '
                     r'at its first download in .*\.sha256'):
    pretrained.starting_variables('kinetics', config.model)
  assert not (tmp_path / 'cache' / 'weights' / file).exists()


def test_init_from_kinetics_is_refused_where_tsm_released_no_file():
  config = ssv2_tsm_resnet50.get_config()
  config.model.num_frames = 12
  with pytest.raises(ConfigError, match="init_from='kinetics': TSM released no Kinetics weights "
                     'for tsm_resnet50 at 12 frames'):
    pretrained.weights_for('kinetics', config.model)
  with pytest.raises(ConfigError, match=r"no ImageNet weights are known for backbone "
                     r"'r2plus1d_18' \(R\(2\+1\)D trains from scratch in its paper"):
    pretrained.weights_for('imagenet', {'backbone': 'r2plus1d_18', 'temporal': 'none'})


def test_every_experiment_starts_from_the_weights_its_table_row_names():
  """ImageNet for the 2D Inception nets, STM and TRN (their papers), Kinetics for TSN and TSM on
  ResNet-50 (the table quotes TSM's Kinetics-pretrained numbers), ImageNet inflated for I3D and
  S3D(-G), scratch for R(2+1)D; each config's docstring says so; smoke runs download nothing."""
  for path in sorted(glob.glob('configs/[!_]*.py')):
    module = importlib.import_module(f'configs.{pathlib.Path(path).stem}')
    if module.__name__ in ('configs.demo', 'configs.folder_8f'):
      continue
    config = module.get_config()
    model = config.model
    expected = ('scratch' if model.backbone.startswith('r2plus1d') else
                'kinetics' if (model.backbone, model.temporal) in (('resnet50', 'tsn'),
                                                                   ('resnet50', 'tsm'))
                else 'imagenet')
    assert config.train.init_from == expected, path
    if expected != 'scratch':
      weights = pretrained.weights_for(expected, model)
      assert weights.file in module.__doc__, path
    else:
      assert 'from scratch' in module.__doc__, path
    assert module.get_config('smoke').train.init_from == 'scratch', path
