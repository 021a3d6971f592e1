"""ImageNet weights by name (`train.init_from=imagenet`), fetched from a real HTTP server on
loopback: downloaded once, checked, converted once, reused; a failed fetch or a wrong hash is
one line naming the URL and where to put the file; a run that cannot get them stops before its
first step."""
import functools
import hashlib
import http.server
import logging
import shutil
import threading

import numpy as np
import pytest
import torch

import torch_reference as ref
from configs import ssv2_8f
from cstm_foundation.errors import BadFile, MissingFile
from cstm_jax.train import checkpoints, experiment, loop, pretrained
from runs import built, smoke


@pytest.fixture
def server(tmp_path):
  """(folder served, base URL, paths requested) of an HTTP server on 127.0.0.1."""
  folder = tmp_path / 'served'
  folder.mkdir()
  requested = []

  class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
      requested.append(self.path)
      super().do_GET()

    def log_message(self, *args):
      pass

  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield folder, f'http://127.0.0.1:{httpd.server_address[1]}', requested
  httpd.shutdown()
  httpd.server_close()


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
  first = pretrained.imagenet_variables(smoke_config.model)
  assert requested == [f'/{file}']
  assert (tmp_path / 'cache' / 'weights' / file).read_bytes() == (folder / file).read_bytes()
  (converted,) = (tmp_path / 'cache' / 'converted').glob('*.npz')
  again = pretrained.imagenet_variables(smoke_config.model)
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
  pretrained.imagenet_variables(smoke_config.model)
  assert requested == [f'/{file}']


def test_a_missing_file_a_truncated_file_and_a_wrong_hash_are_one_line_each(
    served_weights, smoke_config, tmp_path, monkeypatch):
  folder, file, _ = served_weights
  target = tmp_path / 'cache' / 'weights' / file
  weights = pretrained.IMAGENET_WEIGHTS['bninception']
  data = (folder / file).read_bytes()
  (folder / file).unlink()  # the server answers 404
  with pytest.raises(MissingFile) as error:
    pretrained.imagenet_variables(smoke_config.model)
  message = str(error.value)
  assert message.startswith(f'{weights.url}: the ImageNet weights could not be fetched (')
  assert f'download it by hand into {target}' in message and '\n' not in message
  (folder / file).write_bytes(data[:len(data) // 2])  # cut short
  with pytest.raises(BadFile, match=f'{weights.url}: the file fetched has SHA-256 [0-9a-f]{{16}}'
                     f'\\.\\.\\., not {weights.sha256_prefix}\\.\\.\\. as its name says'):
    pretrained.imagenet_variables(smoke_config.model)
  assert not target.exists() and not list(target.parent.glob('.*'))  # nothing partial is left
  # A cached file that does not match is fetched again, whole this time.
  target.write_bytes(b'not the weights')
  (folder / file).write_bytes(data)
  pretrained.imagenet_variables(smoke_config.model)
  assert target.read_bytes() == data


def test_a_mirror_folder_replaces_the_url(served_weights, smoke_config, tmp_path, monkeypatch):
  folder, file, requested = served_weights
  mirror = tmp_path / 'mirror'
  mirror.mkdir()
  shutil.copy(folder / file, mirror / file)
  monkeypatch.setenv('CSTM_WEIGHTS_MIRROR', str(mirror))
  pretrained.imagenet_variables(smoke_config.model)
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


def test_offline_a_run_stops_before_its_first_step(served_weights, prepared_ssv2, tmp_path):
  folder, file, _ = served_weights
  (folder / file).unlink()
  config = smoke(ssv2_8f, prepared_ssv2[0], train__init_from='imagenet')
  with pytest.raises(MissingFile, match='the ImageNet weights could not be fetched'):
    experiment.run(config, tmp_path / 'run')
  assert not list((tmp_path / 'run').glob('checkpoints/[0-9]*'))  # no step was saved
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists()  # nor any step run


def test_every_2d_experiment_starts_from_imagenet_weights_and_smoke_runs_do_not():
  import glob
  import importlib
  import pathlib
  for path in sorted(glob.glob('configs/[!_]*.py')):
    module = importlib.import_module(f'configs.{pathlib.Path(path).stem}')
    if module.__name__ in ('configs.demo', 'configs.folder_8f'):
      continue
    config = module.get_config()
    is_3d = config.model.temporal == 'none'
    assert config.train.init_from == ('scratch' if is_3d else 'imagenet'), path
    if not is_3d:
      pretrained.check_available(config.model.backbone)
    assert module.get_config('smoke').train.init_from == 'scratch', path
