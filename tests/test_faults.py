"""Faults planted the way a user meets them: nothing is lost and no poisoned state is kept."""
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import ssv2_r2plus1d_18
from cstm_jax.config import finish, loader
from cstm_jax.train import checkpoints, experiment, loop, train_state
from cstm_jax.inference import convert, predict
from cstm_jax.distributed import workdir_lock
from cstm_foundation import commands, errors, paths
from cstm_foundation.errors import ConfigError, UserError
from cstm_jax.models.build import build_model
from input_pipeline import labels, pipeline, prepare, records, video_io
from runs import built, smoke


def test_convert_refuses_an_output_folder_it_would_empty(tmp_path, capsys):
  weights = tmp_path / 'weights.npz'
  np.savez(weights, w=np.zeros(3, np.float32))
  (tmp_path / 'notes.txt').write_text('mine')
  for out in (tmp_path, tmp_path / 'weights.npz'):  # `--out .` beside the weights; the input
    with pytest.raises(SystemExit):
      convert.main(['--config', 'configs/ssv2_8f.py:smoke', '--torch', str(weights),
                    '--out', str(out)])
  err = capsys.readouterr().err
  assert 'holds the input' in err and 'would delete' in err
  assert weights.exists() and (tmp_path / 'notes.txt').read_text() == 'mine'

  folder = tmp_path / 'converted'
  folder.mkdir()
  (folder / 'other.txt').write_text('mine')
  resolve = paths.resolve
  problem = convert.output_problem(resolve(folder), resolve(weights), overwrite=False)
  assert 'not a converted checkpoint' in problem and '--overwrite' in problem
  assert convert.output_problem(resolve(folder), resolve(weights), overwrite=True) == ''
  earlier = tmp_path / 'earlier'
  checkpoints.save_variables(earlier, {'params': {'w': np.ones(2, np.float32)}})
  assert convert.output_problem(resolve(earlier), resolve(weights), overwrite=False) == ''
  assert convert.output_problem(resolve(tmp_path / 'new'), resolve(weights), False) == ''


def test_a_non_finite_step_is_never_saved(prepared_ssv2, tmp_path):
  # Checkpoints every step, logs rarely: before, the NaN state was saved between log steps.
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], optim__base_lr=1e30,
                 train__checkpoint_every_steps=1, train__log_every_steps=100,
                 train__eval_every_epochs=1000.0)
  with pytest.raises(loop.NonFiniteLoss) as error:
    experiment.run(config, tmp_path)
  message = str(error.value)
  assert re.match(r'loss is (nan|inf) at step \d+ \(gradient norm ', message), message
  assert 'nothing saved after it' in message
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').glob('*') if p.name.isdigit())
  if saved:
    assert f'the last checkpoint is step {saved[-1]}' in message
  else:
    assert 'there is no checkpoint yet' in message
  config.model.num_classes = prepared_ssv2[1]['classes']
  abstract = built(config).abstract_state
  run = checkpoints.RunCheckpoints(tmp_path)
  for step in saved:
    state = run.latest.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
    assert all(np.isfinite(np.asarray(leaf)).all()
               for leaf in jax.tree_util.tree_leaves(state.params)), step
  run.close()


# --- Checkpoints: corrupt, from another model ---------------------------------------------------

@pytest.fixture(scope='module')
def saved_run(prepared_ssv2, tmp_path_factory):
  """A run folder with checkpoints at steps 2 and 4 (states saved directly, no training)."""
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], model__num_classes=12)
  workdir = tmp_path_factory.mktemp('saved_run')
  state = built(config).init_state(jax.random.key(0))
  iterator = iter(pipeline.train_dataset(config.data, 0, 1))
  run = checkpoints.RunCheckpoints(workdir)
  for step in (2, 4):
    run.save(step, state.replace(step=step), iterator, config=config, force=True)
  run.wait()
  run.close()
  return config, workdir


def restore(config, workdir):
  """(state, step) as a restarted run restores them."""
  run = checkpoints.RunCheckpoints(workdir)
  iterator = iter(pipeline.train_dataset(config.data, 0, 1))
  try:
    state, step = loop.initial_state(built(config), run_checkpoints=run, train_iterator=iterator)
  finally:
    run.close()
  return state, step


def truncate(path, size):
  with open(path, 'r+b') as f:
    f.truncate(size)


def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(saved_run, tmp_path,
                                                                         caplog):
  config, saved = saved_run
  workdir = tmp_path / 'run'
  shutil.copytree(saved, workdir)
  # A copy killed half way: the largest array file of step 4 cut short.
  arrays = sorted((workdir / 'checkpoints/4/state').glob('ocdbt.process_0/d/*'),
                  key=lambda p: p.stat().st_size)
  truncate(arrays[-1], 100)
  with caplog.at_level(logging.WARNING):
    state, step = restore(config, workdir)
  assert step == 2 and int(state.step) == 2
  assert 'checkpoints/4 does not restore' in caplog.text
  # Set aside, not deleted, so the run can save step 4 again.
  assert not (workdir / 'checkpoints/4').exists()
  assert (workdir / 'corrupt/checkpoints_4/state').is_dir()

  # No intact checkpoint left: one line naming the folder; nothing is moved.
  truncate(workdir / 'checkpoints/2/state/_METADATA', 50)
  with pytest.raises(UserError, match=f'{workdir}/checkpoints: no intact checkpoint'):
    restore(config, workdir)
  assert (workdir / 'checkpoints/2').is_dir()


def test_a_checkpoint_of_another_model_names_the_differing_keys(saved_run, tmp_path):
  config, workdir = saved_run
  config = smoke(ssv2_r2plus1d_18, config.data.data_dir, model__num_classes=12,
                 model__width=0.25, optim__optimizer='adamw')
  config.mode, config.eval.checkpoint = 'eval', 'latest'
  with pytest.raises(UserError) as error:
    experiment.run(config, workdir)
  message = str(error.value)
  assert 'was written by a different model or optimizer' in message
  assert 'model.width: 0.125 in the checkpoint, 0.25 now' in message
  assert "optim.optimizer: 'sgd' in the checkpoint, 'adamw' now" in message
  assert (workdir / 'checkpoints/4').is_dir()  # a good checkpoint is never set aside


def test_a_missing_evaluation_split_stops_the_run_before_its_first_step(prepared_ssv2, tmp_path):
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0], data__eval_split='valdation')
  with pytest.raises(ConfigError, match=r"no split 'valdation'; has \['train', 'validation'\]"
                     r"\. .*or set --config.data.eval_split to one of those"):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'checkpoints').exists() and not (tmp_path / 'metrics.jsonl').exists()


def test_a_workdir_that_cannot_be_written_is_refused_before_anything_runs(prepared_ssv2,
                                                                           tmp_path):
  (tmp_path / 'a_file').write_text('')  # a workdir under a file (as root, modes do not stop)
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0])
  with pytest.raises(UserError, match=re.escape(f'{tmp_path}/a_file/run: the workdir cannot be '
                                                'written (Not a directory); give a --workdir')):
    experiment.run(config, tmp_path / 'a_file' / 'run')


def test_num_classes_comes_from_the_dataset_and_a_mismatch_is_refused(prepared_ssv2, tmp_path):
  classes = prepared_ssv2[1]['classes']
  config = smoke(ssv2_r2plus1d_18, prepared_ssv2[0])
  assert config.model.num_classes == 0  # smoke runs take the dataset's
  resolved, names = finish.for_data(config, ['train'])
  assert resolved.model.num_classes == classes == len(names) and config.model.num_classes == 0
  assert finish.is_finished(resolved) and not finish.is_finished(config)
  config.model.num_classes = 174
  with pytest.raises(ConfigError, match=f'model.num_classes is 174 but the dataset '
                     f'something_something_v2 in .* has {classes} classes: set '
                     f'--config.model.num_classes={classes}'):
    experiment.run(config, tmp_path)
  assert not (tmp_path / 'checkpoints').exists()


def test_init_from_weights_of_another_width_fails_unless_partial_is_asked(saved_run, tmp_path,
                                                                        caplog):
  config, workdir = saved_run
  narrow = tmp_path / 'narrow'
  state, _ = restore(config, workdir)
  checkpoints.save_variables(narrow, train_state.variables_of(state))
  wider = smoke(ssv2_r2plus1d_18, config.data.data_dir, model__num_classes=12,
                model__width=0.25, train__init_from=str(narrow))
  with pytest.raises(ConfigError) as error:
    restore(wider, tmp_path / 'fresh')
  message = str(error.value)
  assert f'init_from {narrow}: ' in message and 'do not load' in message
  assert 'params/backbone/layer1_0/bn1/bias (8,) for (16,)' in message
  assert 'init_partial=True' in message
  # On purpose (what train.init_partial passes): what fits loads, the rest is named.
  model = build_model(wider.model)
  fresh = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))
  with caplog.at_level(logging.WARNING):
    checkpoints.merge_pretrained(fresh, checkpoints.load_variables(narrow), partial=True)
  assert 'start from their initialisation' in caplog.text


# --- Preparing data: again, killed, duplicates, headers, empty and long videos -----------------

@pytest.fixture
def small_download(synthetic_ssv2, tmp_path):
  """A copy of the synthetic SSv2 download cut to 4 training and 2 validation videos."""
  src = tmp_path / 'ssv2'
  shutil.copytree(synthetic_ssv2[0], src)
  for split, count in (('train', 4), ('validation', 2)):
    annotations = src / f'something-something-v2-{split}.json'
    annotations.write_text(json.dumps(json.loads(annotations.read_text())[:count]))
  return src


def annotations(src, split):
  return json.loads((src / f'something-something-v2-{split}.json').read_text())


def test_preparing_again_keeps_the_data_and_its_report(small_download, tmp_path, capsys):
  src, data_dir = small_download, tmp_path / 'data'
  train = annotations(src, 'train')
  (src / '20bn-something-something-v2' / f"{train[0]['id']}.webm").write_bytes(b'')
  validation = annotations(src, 'validation')
  validation.append(train[1])  # a training video listed for validation as well
  (src / 'something-something-v2-validation.json').write_text(json.dumps(validation))
  args = ['--dataset', 'ssv2', '--manual_dir', str(src), '--data_dir', str(data_dir),
          '--workers', '1', '--short_side', '32']
  assert prepare.main(args) == 0
  first = capsys.readouterr().out
  assert '6 videos written, 1 skipped' in first
  assert f"{train[1]['id']} is in both the training and the validation split" in first
  folder = data_dir / 'something_something_v2' / '1.0.0'
  report = json.loads((folder / prepare.REPORT).read_text())
  assert report['skipped'][0]['reason'] == 'empty file (0 bytes)'
  assert report['in_train_and_validation'] == [train[1]['id']]

  # What a killed preparation leaves beside the dataset.
  leftover = folder.parent / 'incomplete.K1LLED_1.0.0'
  (leftover / 'something_something_v2-train.array_record-00000-of-00001').parent.mkdir()
  (leftover / 'something_something_v2-train.array_record-00000-of-00001').write_bytes(b'0' * 99)
  assert prepare.main(args) == 0
  assert 'already prepared with these options; kept (6 videos written, 1 skipped' in (
      capsys.readouterr().out)
  assert json.loads((folder / prepare.REPORT).read_text()) == report
  assert not leftover.exists()

  # Other options: refused with the difference named, or rebuilt when asked.
  assert commands.run_main(prepare.main, args[:-1] + ['40']) == 1
  assert f'{folder} was prepared with other options (short_side 32 then, 40 now): pass ' \
         '--rebuild' in capsys.readouterr().err
  assert prepare.main(args[:-1] + ['40', '--rebuild']) == 0
  assert json.loads((folder / prepare.REPORT).read_text())['options'] == {'short_side': 40}


def test_a_video_id_listed_twice_stops_before_any_decoding(small_download, tmp_path, capsys):
  train = annotations(small_download, 'train')
  path = small_download / 'something-something-v2-train.json'
  path.write_text(json.dumps(train + [train[2]]))
  for video in (small_download / '20bn-something-something-v2').iterdir():
    video.write_bytes(b'')  # were anything decoded, it would be reported as empty instead
  args = ['--dataset', 'ssv2', '--manual_dir', str(small_download), '--data_dir',
          str(tmp_path / 'data'), '--workers', '1']
  assert commands.run_main(prepare.main, args) == 1
  assert (f"error: {path}: 1 video ids occur more than once: {train[2]['id']} "
          in capsys.readouterr().err)

  # One class folder holding a.webm and a.mp4.
  folder = tmp_path / 'mine' / 'waving'
  folder.mkdir(parents=True)
  (folder / 'a.webm').write_bytes(b'')
  (folder / 'a.mp4').write_bytes(b'')
  with pytest.raises(labels.AnnotationError,
                     match=r'1 video ids occur more than once: waving/a \(a.mp4, a.webm\)'):
    prepare.prepare('folder', tmp_path / 'mine', tmp_path / 'data2', workers=1)


def test_a_csv_header_line_is_not_a_class(tmp_path):
  (tmp_path / 'train.csv').write_text('path,label\nv/1.webm,waving\nv/2.webm,clapping\n')
  entries = labels.read_folder_dataset(tmp_path, 'train.csv')
  assert [e.label for e in entries] == ['waving', 'clapping']


PEAK_MEMORY = """
import sys
import time
from input_pipeline import video_io

def status(key):
  for line in open('/proc/self/status'):
    if line.startswith(key):
      return int(line.split()[1]) * 1024

def peak_of(work):
  open('/proc/self/clear_refs', 'w').write('5')  # resets the peak (VmHWM) to the current size
  before = status('VmRSS')
  work()
  return status('VmHWM') - before

video_io.video_to_jpegs(sys.argv[1], 64)  # codecs and buffers allocated once
every_frame = peak_of(lambda: video_io.decode_video(sys.argv[1]))
print(peak_of(lambda: video_io.video_to_jpegs(sys.argv[1], 64)), every_frame)
"""


def test_a_long_video_is_resized_while_it_decodes(tmp_path):
  """The memory a 48-frame 640x480 video takes to become 64 px JPEGs: a few frames, not all of
  them at full size (what decoding every frame first takes, 44 MiB)."""
  path = tmp_path / 'long.webm'
  rng = np.random.default_rng(0)
  video_io.write_webm(path, [rng.integers(0, 255, (480, 640, 3), np.uint8)] * 48)
  result = subprocess.run([sys.executable, '-c', PEAK_MEMORY, str(path)], capture_output=True,
                          text=True, check=True, cwd=pathlib.Path(__file__).parent.parent)
  resized, every_frame = map(int, result.stdout.split())
  print(f'peak memory: {resized / 2 ** 20:.1f} MiB resized while decoding, '
        f'{every_frame / 2 ** 20:.1f} MiB decoding every frame first')  # docs/reliability.md
  assert every_frame > 40 * 2 ** 20  # the measurement sees 48 x 0.9 MiB frames
  assert resized < 8 * 2 ** 20, (resized, every_frame)


# --- Weight files and predict ------------------------------------------------------------------

def safetensors_file(path, header: bytes, body: bytes = b''):
  path.write_bytes(len(header).to_bytes(8, 'little') + header + body)
  return path


def test_every_damaged_weights_file_is_named_with_its_problem(tmp_path):
  import torch
  cases = {
      safetensors_file(tmp_path / 'short.safetensors', json.dumps(
          {'w': {'dtype': 'F32', 'shape': [1000], 'data_offsets': [0, 4000]}}).encode(),
          b'\0' * 8): 'not a readable .safetensors weights file (SafetensorError: Error while '
                       'deserializing header: incomplete metadata, file not fully covered',
      safetensors_file(tmp_path / 'list.safetensors', b'[1, 2]'):
          'not a readable .safetensors weights file (SafetensorError: Error while deserializing '
          'header: invalid JSON in header',
      safetensors_file(tmp_path / 'nodtype.safetensors', json.dumps(
          {'w': {'shape': [2], 'data_offsets': [0, 8]}}).encode(), b'\0' * 8):
          'missing field `dtype`',
  }
  torch.save(torch.zeros(3), tmp_path / 'tensor.pth')
  cases[tmp_path / 'tensor.pth'] = 'holds a Tensor, not a state dict'
  np.savez(tmp_path / 'objects.npz', w=np.array([{'a': 1}], dtype=object))
  cases[tmp_path / 'objects.npz'] = 'not a readable .npz weights file (ValueError: Object arrays'
  for path, problem in cases.items():
    with pytest.raises(errors.BadFile) as error:
      convert.load_state_dict(path)
    assert str(error.value).startswith(f'{path}: ') and problem in str(error.value), error.value


def test_predict_checks_its_arguments_before_loading_anything(tmp_path, capsys):
  video = tmp_path / 'clip.webm'
  video.write_bytes(b'')
  missing_run = str(tmp_path / 'no_run')  # loading it would fail: the checks come first
  for flags, problem in ((['--views', '3x3'], "--views: views '3x3': clips must be 1 or 2"),
                         (['--topk', '-3'], 'flag --topk=-3: -3 is not a positive integer')):
    with pytest.raises(SystemExit):
      predict.main(['--workdir', missing_run, '--video', str(video), *flags])
    assert problem in capsys.readouterr().err
  assert not (tmp_path / 'predictions.csv').exists()

  # A damaged variables checkpoint: one line naming it.
  weights = tmp_path / 'weights'
  checkpoints.save_variables(weights, {'params': {'head': {'kernel': np.ones((4, 3))}}})
  truncate(weights / '_METADATA', 20)
  assert commands.run_main(predict.main, ['--checkpoint', str(weights), '--config',
                                        'configs/ssv2_8f.py:smoke', '--video', str(video)]) == 1
  assert f'error: {weights}: not a readable variables checkpoint' in capsys.readouterr().err


def test_a_misspelt_or_misplaced_config_key_gets_the_closest_keys():
  config = ssv2_r2plus1d_18.get_config()
  message = lambda key: loader.unknown_key_message(config, key)
  assert message('optim.lerning_rate') == (
      'unknown config key optim.lerning_rate; did you mean optim.base_lr?')
  assert message('train.batch_size').startswith(
      'unknown config key train.batch_size; did you mean data.batch_size')
  assert 'did you mean train.init_partial?' in message('train.init_parital')


def test_a_renamed_or_removed_config_key_says_what_became_of_it():
  config = ssv2_r2plus1d_18.get_config()
  assert loader.unknown_key_message(config, 'model.conv3d') == (
      'config key model.conv3d is now model.conv3d_grouping')
  assert loader.unknown_key_message(config, 'data.colour').startswith(
      'config key data.colour is gone: the backbone sets its input normalisation')
  assert loader.unknown_key_message(config, 'data.eval_crops') == (
      'config key data.eval_crops is gone: eval.views and eval.final_views decide the views')


def test_an_older_runs_config_json_loads_with_todays_keys(tmp_path):
  # What runs wrote before model.conv3d was renamed, data.colour, data.eval_clips and
  # data.eval_crops removed, and the TRN, schedule, batch and BatchNorm-group keys added.
  today = loader.load('ssv2_8f').to_dict()
  old = json.loads(json.dumps(today))
  old['model']['conv3d'] = old['model'].pop('conv3d_grouping')
  old['data'].update(colour='bgr255', eval_clips=1, eval_crops=1)
  del old['model']['consensus'], old['model']['trn_feature_dim']
  del old['optim']['lr_every'], old['optim']['cosine_min_ratio']
  del old['data']['device_batch_max'], old['train']['bn_group']
  (tmp_path / 'config.json').write_text(json.dumps(old))
  loaded = loader.load(tmp_path / 'config.json')
  # Those runs moved the lr every step, to zero: their config says so.
  assert (loaded.optim.lr_every, loaded.optim.cosine_min_ratio) == ('step', 0.0)
  today['optim'].update(lr_every='step', cosine_min_ratio=0.0)
  assert json.loads(loaded.to_json()) == json.loads(json.dumps(today))
  assert build_model(old['model']).backbone is not None  # the model block alone upgrades too


# --- Damaged prepared data --------------------------------------------------------------------

def damaged_copy(prepared_ssv2, tmp_path, damage):
  """A copy of the prepared dataset whose training shard `damage(path)` damages; returns the
  data dir and the shard."""
  data_dir = tmp_path / 'data'
  shutil.copytree(prepared_ssv2[0], data_dir)
  shard = next((data_dir / 'something_something_v2').glob('*/*-train.array_record-*'))
  damage(shard)
  return data_dir, shard


def flip_bytes(path):
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
  path.write_bytes(bytes(data))


def test_a_shard_with_flipped_bytes_stops_training_naming_it_and_verify_lists_it(
    prepared_ssv2, tmp_path, capsys):
  data_dir, shard = damaged_copy(prepared_ssv2, tmp_path, flip_bytes)
  done = subprocess.run(
      [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
       f'--workdir={tmp_path / "run"}', f'--config.data.data_dir={data_dir}'],
      cwd=pathlib.Path(__file__).resolve().parent.parent, capture_output=True, text=True,
      timeout=300)
  assert done.returncode == 1
  assert 'Traceback' not in done.stderr
  errors_ = [line for line in done.stderr.splitlines() if line.startswith('error: ')]
  assert len(errors_) == 1 and errors_[0].startswith(f'error: {shard}: record ')
  assert (f'python -m input_pipeline.prepare --verify --dataset ssv2 --data_dir {data_dir}'
          in errors_[0])

  assert prepare.main(['--verify', '--dataset=ssv2', f'--data_dir={data_dir}']) == 1
  out = capsys.readouterr().out
  assert 'records read, ' in out and f'  train: {shard}: ' in out and '--rebuild' in out
  assert prepare.main(['--verify', '--dataset=ssv2', f'--data_dir={prepared_ssv2[0]}']) == 0
  assert ', 0 damaged' in capsys.readouterr().out


def test_a_truncated_shard_names_the_shard_at_its_first_read(prepared_ssv2, tmp_path):
  data_dir, shard = damaged_copy(prepared_ssv2, tmp_path,
                                 lambda path: truncate(path, path.stat().st_size // 3))
  report = prepare.verify('ssv2', data_dir)
  assert report['damaged'] and {r['shard'] for r in report['damaged']} == {str(shard)}
  config = smoke(ssv2_r2plus1d_18, data_dir).data
  source, _ = pipeline.open_split(config, 'train')
  with pytest.raises(records.DamagedRecord, match=re.escape(str(shard)) + ': record 0 cannot '
                     'be read'):
    source[0]


# --- One writer per workdir -------------------------------------------------------------------

def test_a_second_run_in_the_same_workdir_is_refused_naming_the_first(prepared_ssv2, tmp_path):
  root = pathlib.Path(__file__).resolve().parent.parent
  command = [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
             f'--workdir={tmp_path}', f'--config.data.data_dir={prepared_ssv2[0]}',
             '--config.train.max_steps=12']
  first = subprocess.Popen(command, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  try:
    deadline = time.monotonic() + 120
    while not (tmp_path / 'LOCK').exists() and time.monotonic() < deadline:
      time.sleep(0.05)
    second = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
  finally:
    _, first_err = first.communicate(timeout=300)
  assert second.returncode == 1
  lines = [line for line in second.stderr.splitlines() if line.startswith('error: ')]
  assert len(lines) == 1 and 'Traceback' not in second.stderr
  assert lines[0].startswith(f'error: {tmp_path}: another run is training in this workdir (host '
                             f'{socket.gethostname()}, pid {first.pid}, since ')
  assert first.returncode == 0, first_err  # the first run was not disturbed
  assert not (tmp_path / 'LOCK').exists()  # and left no lock behind


def lock_file(workdir, **holder):
  record = {'host': socket.gethostname(), 'pid': os.getpid(), 'slurm_job': None,
            'started': time.time() - 3600, 'heartbeat': time.time(), **holder}
  (workdir / 'LOCK').write_text(json.dumps(record))


def test_a_stale_lock_is_taken_over_with_a_warning_and_a_live_one_refused(tmp_path, caplog,
                                                                          monkeypatch):
  dead_pid = subprocess.Popen(['true'])  # a pid that no longer runs
  dead_pid.wait()
  zombie = subprocess.Popen(['true'])  # ended, not yet reaped (a killed run in a container)
  time.sleep(0.3)
  cases = (  # (holder, taken over?)
      ({'pid': dead_pid.pid}, True),  # this host, process gone (a SIGKILLed run)
      ({'pid': zombie.pid}, True),
      ({'host': 'elsewhere', 'pid': 1, 'heartbeat': time.time() - 2 * workdir_lock.STALE_S},
       True),  # another host, silent for 10 minutes (a preempted VM)
      ({'host': 'elsewhere', 'pid': 1, 'slurm_job': '77'}, True),  # this job, requeued
      ({'host': 'elsewhere', 'pid': 1}, False),  # another host, alive
      ({'pid': 1}, False),  # this host, alive (pid 1 always runs)
  )
  monkeypatch.setenv('SLURM_JOB_ID', '77')
  for holder, taken in cases:
    lock_file(tmp_path, **holder)
    caplog.clear()
    lock = workdir_lock.WorkdirLock(tmp_path)
    if taken:
      with caplog.at_level('WARNING'), lock:
        assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == os.getpid()
      assert 'Taking over the lock' in caplog.text
      assert not (tmp_path / 'LOCK').exists()
    else:
      with pytest.raises(workdir_lock.WorkdirInUse, match='another run is training'):
        lock.acquire()
      assert json.loads((tmp_path / 'LOCK').read_text())['pid'] == holder['pid']
  zombie.wait()


# --- A checkpoint that cannot be written ------------------------------------------------------

def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_same_command_recovers(
    prepared_ssv2, tmp_path):
  # Files may not grow past 64 KiB (`ulimit -f`, RLIMIT_FSIZE): every checkpoint write fails as
  # it would on a full disk (EFBIG instead of ENOSPC; a full tmpfs gives the same line).
  workdir = tmp_path / 'run'
  command = [sys.executable, 'main.py', '--config=configs/ssv2_r2plus1d_18.py:smoke',
             f'--workdir={workdir}', f'--config.data.data_dir={prepared_ssv2[0]}',
             '--config.xla.cache_dir=off']  # the compile cache would fail to write too
  root = pathlib.Path(__file__).resolve().parent.parent
  limited = ['bash', '-c', 'ulimit -f 64 && exec "$@"', 'limited', *command]  # 64 x 1 KiB
  full = subprocess.run(limited, cwd=root, capture_output=True, text=True, timeout=300)
  assert full.returncode == 1
  # No traceback: orbax's saver threads logged one each, tensorstore printed one per array.
  assert 'Traceback' not in full.stderr and 'Event loop is closed' not in full.stderr
  lines = [line for line in full.stderr.splitlines() if line.startswith(('error: ', 'E1'))]
  assert len(lines) == 1, full.stderr
  assert re.match(rf'error: the checkpoint of step \d+ could not be written to {workdir}/'
                  r'(checkpoints|best) \(.*File too large.*\); nothing of it is used\. Intact '
                  r'checkpoints: checkpoints: none; best: none\. Free space', lines[0]), lines[0]
  # Once the cause is gone, the same command trains to the end.
  again = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr
  assert (workdir / 'checkpoints' / '6').is_dir()
