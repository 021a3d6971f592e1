"""Synthetic data, the TFDS builders and the prepare CLI, with real webm / JPEG files."""
import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from cstm_foundation import commands
from input_pipeline import builders, labels, prepare, synthetic, video_io  # noqa: F401


def read_back(data_dir, name, split):
  source = tfds.data_source(name, data_dir=str(data_dir), split=split)
  class_names = tfds.builder(name, data_dir=str(data_dir)).info.features['label'].names
  return {r['id'].decode(): (class_names[r['label']], r['frames']) for r in source}


def test_synthetic_ssv2_is_laid_out_like_the_real_download(synthetic_ssv2):
  root, written = synthetic_ssv2
  names = labels.read_ssv2_classes(root)
  assert names == synthetic.class_names() and len(names) == 12
  train = json.loads((root / 'something-something-v2-train.json').read_text())
  assert set(train[0]) == {'id', 'label', 'template', 'placeholders'}
  assert '[something]' in train[0]['template'] or '[Something]' in train[0]['template']
  test = json.loads((root / 'something-something-v2-test.json').read_text())
  assert all(set(item) == {'id'} for item in test)
  for split in ('train', 'validation', 'test'):
    for video_id, _ in written[split]:
      frames = video_io.decode_video(root / '20bn-something-something-v2' / f'{video_id}.webm')
      assert 16 <= len(frames) <= 32 and frames[0].shape == (32, 42, 3)


def test_same_seed_same_dataset(synthetic_ssv2, tmp_path):
  root, _ = synthetic_ssv2
  again = synthetic.generate(tmp_path / 'a', train=4, val=0, test=0, size=32, seed=0, workers=1)
  other = synthetic.generate(tmp_path / 'b', train=4, val=0, test=0, size=32, seed=1, workers=1)
  first_id = again['train'][0][0]
  videos = lambda d: d / '20bn-something-something-v2' / f'{first_id}.webm'
  again_frames = video_io.decode_video(videos(tmp_path / 'a'))
  repeat = synthetic.generate(tmp_path / 'c', train=4, val=0, test=0, size=32, seed=0, workers=2)
  assert repeat == again
  np.testing.assert_array_equal(np.stack(video_io.decode_video(videos(tmp_path / 'c'))),
                                np.stack(again_frames))
  assert ((tmp_path / 'a' / 'something-something-v2-train.json').read_text() ==
          (tmp_path / 'c' / 'something-something-v2-train.json').read_text())
  assert other != again


def test_ssv2_round_trip(synthetic_ssv2, prepared_ssv2):
  _, written = synthetic_ssv2
  data_dir, report = prepared_ssv2
  assert report['videos_written'] == 20 and report['videos_skipped'] == 0
  assert report['splits'] == {'train': 12, 'validation': 8}
  for split in ('train', 'validation'):
    records = read_back(data_dir, 'something_something_v2', split)
    assert {k: v[0] for k, v in records.items()} == dict(written[split])
    frames = next(iter(records.values()))[1]
    assert min(video_io.decode_jpeg(frames[0]).shape[:2]) == 48  # --short_side
  assert (pathlib.Path(report['path']) / prepare.REPORT).exists()


def test_records_read_what_tfds_decodes_from_uncompressed_shards(prepared_ssv2):
  """The loader's own shard reader gives what TFDS's data source decodes, record for record
  (also a part of a split: a slice of a shard); the shards are written uncompressed (JPEG
  frames do not compress, and decompressing slowed the loader)."""
  from array_record.python import array_record_module
  from input_pipeline import records
  data_dir, report = prepared_ssv2
  shards = sorted(pathlib.Path(report['path']).glob('*.array_record-*'))
  assert len(shards) == 2
  for shard in shards:
    options = array_record_module.ArrayRecordReader(str(shard)).writer_options_string()
    assert 'uncompressed' in options.split(','), (shard, options)
  builder = tfds.builder('something_something_v2', data_dir=str(data_dir))
  for split in ('train', 'validation'):
    decoded = builder.as_data_source(split)
    ours = records.Records(builder.info.splits[split].file_instructions)
    assert len(ours) == len(decoded) == report['splits'][split]
    for mine, theirs in zip(ours, decoded):
      assert list(mine['frames']) == list(theirs['frames']) and len(mine['frames']) >= 16
      assert (mine['label'], mine['id']) == (theirs['label'], theirs['id'])
  part = builder.info.splits['train[3:7]']
  ours, decoded = records.Records(part.file_instructions), builder.as_data_source('train[3:7]')
  assert [r['id'] for r in ours] == [r['id'] for r in decoded] and len(ours) == 4
  with pytest.raises(IndexError):
    ours[4]


@pytest.mark.parametrize('layout, dataset, name', [
    ('ssv1', 'ssv1', 'something_something_v1'), ('jester', 'jester', 'jester')])
def test_frame_folder_round_trip(tmp_path, layout, dataset, name):
  written = synthetic.generate(tmp_path / 'src', train=6, val=3, test=1, size=32, seed=3,
                               fmt='frames', layout=layout, workers=1)
  report = prepare.prepare(dataset, tmp_path / 'src', tmp_path / 'data', workers=1)
  assert report['videos_written'] == 9
  # SSv1 / Jester class index = position in the sorted label list.
  builder = tfds.builder(name, data_dir=str(tmp_path / 'data'))
  assert builder.info.features['label'].names == sorted(synthetic.class_names())
  for split in ('train', 'validation'):
    assert {k: v[0] for k, v in read_back(tmp_path / 'data', name, split).items()} == dict(
        written[split])
  # Native frames are kept byte for byte.
  video_id = written['train'][0][0]
  folder = tmp_path / 'src' / labels.FRAME_LAYOUTS[layout][1] / video_id
  stored = read_back(tmp_path / 'data', name, 'train')[video_id][1]
  assert stored[0] == (folder / '00001.jpg').read_bytes()


def test_folder_builder_round_trip(synthetic_ssv2, tmp_path):
  root, written = synthetic_ssv2
  src = tmp_path / 'mine'
  expected = {}
  for split, items in (('train', written['train'][:6]), ('validation', written['validation'][:3])):
    for video_id, class_name in items:
      target = src / split / class_name / f'clip{video_id}.webm'
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(root / '20bn-something-something-v2' / f'{video_id}.webm', target)
      expected.setdefault(split, {})[f'{class_name}/clip{video_id}'] = class_name
  report = prepare.prepare('folder', src, tmp_path / 'data', workers=1, short_side=32)
  assert report['videos_written'] == 9
  for split in ('train', 'validation'):
    assert {k: v[0] for k, v in read_back(tmp_path / 'data', 'video_folder', split).items()} == (
        expected[split])
  # The same videos listed in path,label csv files instead of split folders.
  listed = tmp_path / 'listed'
  shutil.copytree(src, listed / 'videos')
  for split in ('train', 'validation'):
    (listed / f'{split}.csv').write_text(''.join(
        f'videos/{split}/{key}.webm,{label}\n' for key, label in expected[split].items()))
  report = prepare.prepare('folder', listed, tmp_path / 'data_csv', workers=1, short_side=32)
  assert report['splits'] == {'train': 6, 'validation': 3}
  labels_back = read_back(tmp_path / 'data_csv', 'video_folder', 'validation')
  assert sorted(v[0] for v in labels_back.values()) == sorted(expected['validation'].values())


def test_own_videos_walkthrough(synthetic_ssv2, tmp_path, capsys):
  # docs/training.md "Your own videos" at the smoke size: class folders -> prepare -> train -> predict.
  from configs import folder_8f
  from cstm_jax.inference import predict
  from cstm_jax.train import experiment
  root, written = synthetic_ssv2
  for split, items in (('train', written['train'][:8]), ('validation', written['validation'][:4])):
    for video_id, class_name in items:
      target = tmp_path / 'my_videos' / split / class_name / f'v{video_id}.webm'
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(root / '20bn-something-something-v2' / f'{video_id}.webm', target)
  prepare.prepare('folder', tmp_path / 'my_videos', tmp_path / 'data', workers=1, short_side=48)
  config = folder_8f.get_config('smoke')
  assert config.model.num_classes == 0  # the prepared dataset's
  config.data.data_dir, config.train.max_steps = str(tmp_path / 'data'), 2
  # R(2+1)D compiles fastest (CSTM on BN-Inception trains end to end in tests/test_finetune.py).
  config.model.update(backbone='r2plus1d_18', temporal='none')
  final = experiment.run(config, tmp_path / 'run')['1x1']
  classes = sorted({c for _, c in written['train'][:8] + written['validation'][:4]})
  assert final['examples'] == 4 and len(final['per_class_top1']) == len(classes)
  video = next((tmp_path / 'my_videos' / 'validation').rglob('*.webm'))
  assert predict.main(['--workdir', str(tmp_path / 'run'), '--video', str(video), '--json',
                       '--topk', '1']) == 0
  answer = capsys.readouterr().out.splitlines()[-1]  # after TFDS's own lines from prepare
  assert json.loads(answer)['top'][0]['class'] in classes


def test_bad_inputs_are_skipped_and_reported(synthetic_ssv2, tmp_path, capsys):
  root, written = synthetic_ssv2
  src = tmp_path / 'ssv2'
  shutil.copytree(root, src)
  videos = src / '20bn-something-something-v2'
  train = json.loads((src / 'something-something-v2-train.json').read_text())
  truncated, garbage, missing = (train[i]['id'] for i in range(3))
  data = (videos / f'{truncated}.webm').read_bytes()
  (videos / f'{truncated}.webm').write_bytes(data[:len(data) // 2])
  (videos / f'{garbage}.webm').write_bytes(b'\x1aE\xdf\xa3 not really a webm' * 20)
  (videos / f'{missing}.webm').unlink()
  train.append({'id': '999', 'template': 'Juggling [something]', 'label': 'juggling',
                'placeholders': []})
  (src / 'something-something-v2-train.json').write_text(json.dumps(train))

  assert prepare.main(['--dataset', 'ssv2', '--manual_dir', str(src), '--data_dir',
                       str(tmp_path / 'data'), '--workers', '2', '--short_side', '32']) == 0
  out = capsys.readouterr().out
  assert '17 videos written, 4 skipped' in out
  report = json.loads((tmp_path / 'data' / 'something_something_v2' / '1.0.0' /
                       prepare.REPORT).read_text())
  reasons = {s['id']: s['reason'] for s in report['skipped']}
  assert reasons[truncated].startswith('truncated')
  assert reasons[garbage].startswith('cannot decode video')
  assert reasons[missing] == 'missing file'
  assert reasons['999'] == "unknown class 'Juggling something'"
  good = {v for v, _ in written['train']} - {truncated, garbage, missing}
  assert set(read_back(tmp_path / 'data', 'something_something_v2', 'train')) == good


def test_bad_frame_folders_are_skipped_and_reported(tmp_path):
  written = synthetic.generate(tmp_path / 'src', train=5, val=2, test=0, size=32, seed=4,
                               fmt='frames', workers=1)
  frames_root = tmp_path / 'src' / '20bn-something-something-v1'
  empty, corrupt = written['train'][0][0], written['train'][1][0]
  for f in (frames_root / empty).iterdir():
    f.unlink()
  (frames_root / corrupt / '00003.jpg').write_bytes(b'\xff\xd8\xff garbage')
  report = prepare.prepare('ssv1', tmp_path / 'src', tmp_path / 'data', workers=1)
  reasons = {s['id']: s['reason'] for s in report['skipped']}
  assert reasons == {empty: 'empty frame folder', corrupt: 'corrupt JPEG 00003.jpg'}
  assert report['splits'] == {'train': 3, 'validation': 2}


def test_malformed_annotations_stop_with_the_file_named(synthetic_ssv2, tmp_path, capsys):
  src = tmp_path / 'ssv2'
  shutil.copytree(synthetic_ssv2[0], src, ignore=shutil.ignore_patterns('*.webm'))
  bad = src / 'something-something-v2-validation.json'
  bad.write_text('{"id": "1"}')
  code = commands.run_main(prepare.main, ['--dataset', 'ssv2', '--manual_dir', str(src),
                                         '--data_dir', str(tmp_path / 'data'), '--workers', '1'])
  assert code == 1
  assert f'{bad}: expected a list' in capsys.readouterr().err
  (src / 'something-something-v2-labels.json').write_text('not json')
  assert commands.run_main(prepare.main, ['--dataset', 'ssv2', '--manual_dir', str(src),
                                        '--data_dir', str(tmp_path / 'data')]) == 1
  assert 'something-something-v2-labels.json: not valid JSON' in capsys.readouterr().err


def test_a_stopped_preparation_resumes_to_the_uninterrupted_dataset(tmp_path, monkeypatch,
                                                                      capsys):
  """Stopped while decoding, killed mid-shard (its leftovers), stopped while TFDS writes: the
  same command each time, and the end is the uninterrupted preparation's examples in the same
  order, the same report, and a clean --verify. (Real signals at random moments:
  tests/test_stops.py runs tools/chaos_prepare.py.)"""
  from cstm_foundation import stopping
  from input_pipeline import prepare_work
  from tools import chaos_prepare
  src = chaos_prepare.damaged_download(tmp_path, 14, seed=0)
  args = ['--dataset', 'ssv2', '--manual_dir', str(src), '--workers', '1', '--short_side',
          '32', '--save_every_s', '0']
  assert prepare.main(args + ['--data_dir', str(tmp_path / 'straight')]) == 0

  encode, calls = builders._encode_video, []

  def stop_at_the_sixth(job):  # as a SIGTERM landing during the sixth video
    calls.append(job)
    if len(calls) == 6:
      stopping.request(15)
    return encode(job)

  monkeypatch.setattr(builders, '_encode_video', stop_at_the_sixth)
  data = tmp_path / 'resumed'
  try:
    assert commands.run_main(prepare.main, args + ['--data_dir', str(data)],
                             at_safe_points=True) == 0
  finally:
    stopping.reset()
  work = data / 'something_something_v2' / '1.0.0.unfinished'
  assert capsys.readouterr().err.strip().splitlines()[-1] == (
      f'Stopped preparing something_something_v2 train after 6 of 14 videos ({work} keeps '
      'them) on request (SIGTERM); the same command resumes.')
  monkeypatch.setattr(builders, '_encode_video', encode)
  # A SIGKILL while a shard was written, and between a shard's two files.
  (work / 'train' / '00000006.tmp').write_bytes(b'half a shard')
  (work / 'train' / '00000006-00000007.json').write_text('{}')

  results = prepare_work.Work.results

  def stop_while_tfds_writes(self, split):
    for number, result in enumerate(results(self, split)):
      if number == 3:
        stopping.request(2)
      yield result

  monkeypatch.setattr(prepare_work.Work, 'results', stop_while_tfds_writes)
  try:
    assert commands.run_main(prepare.main, args + ['--data_dir', str(data)],
                             at_safe_points=True) == 0
  finally:
    stopping.reset()
  err = capsys.readouterr().err
  assert f'preparing something_something_v2 train: resuming from {work}: 6 of 14 videos are ' \
      'prepared, 8 to go' in err
  assert err.strip().splitlines()[-1] == (
      f'Stopped writing the something_something_v2 dataset from {work} on request (SIGINT); the '
      'same command resumes.')
  monkeypatch.setattr(prepare_work.Work, 'results', results)
  assert prepare.main(args + ['--data_dir', str(data)]) == 0
  assert 'resuming from' in capsys.readouterr().err and not work.exists()
  assert chaos_prepare.examples(data) == chaos_prepare.examples(tmp_path / 'straight')
  report = chaos_prepare.report_of(data)
  assert report == chaos_prepare.report_of(tmp_path / 'straight')
  assert report['videos_skipped'] == 4 and report['skipped'][0]['id'] == '999999'
  assert prepare.main(['--verify', '--dataset', 'ssv2', '--data_dir', str(data)]) == 0


def test_a_second_prepare_into_the_same_folder_is_refused_naming_the_first(tmp_path, capsys):
  from input_pipeline import prepare_work
  src = tmp_path / 'src'
  synthetic.generate(src, 4, 2, test=0, size=32, workers=1)
  folder = tmp_path / 'data' / 'something_something_v2'
  args = ['--dataset', 'ssv2', '--manual_dir', str(src), '--data_dir', str(tmp_path / 'data'),
          '--workers', '1']
  with prepare_work.Lock(folder):  # as a prepare running in another process
    assert commands.run_main(prepare.main, args) == 1
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert line.startswith(f'error: {folder}: prepare (pid ') and line.endswith(
      ' is preparing this dataset now; wait for it to end (or stop it: the same command '
      'resumes its work)'), line
  assert commands.run_main(prepare.main, args) == 0  # the lock went with its holder


def test_a_preparation_killed_between_the_dataset_and_its_report_writes_the_report(
    tmp_path, monkeypatch):
  from tools import chaos_prepare
  src = chaos_prepare.damaged_download(tmp_path, 6, seed=0)
  args = ['--dataset', 'ssv2', '--manual_dir', str(src), '--workers', '1', '--short_side', '32']
  assert prepare.main(args + ['--data_dir', str(tmp_path / 'straight')]) == 0
  finish = prepare._finish

  def killed(*args, **kwargs):  # as a SIGKILL right after TFDS renamed the dataset into place
    raise SystemExit(137)

  monkeypatch.setattr(prepare, '_finish', killed)
  data = tmp_path / 'killed'
  with pytest.raises(SystemExit):
    prepare.main(args + ['--data_dir', str(data)])
  folder = data / 'something_something_v2' / '1.0.0'
  assert (folder / 'dataset_info.json').exists() and not (folder / prepare.REPORT).exists()
  monkeypatch.setattr(prepare, '_finish', finish)
  assert prepare.main(args + ['--data_dir', str(data)]) == 0
  assert chaos_prepare.report_of(data) == chaos_prepare.report_of(tmp_path / 'straight')
  assert not (data / 'something_something_v2' / '1.0.0.unfinished').exists()


def test_the_synthetic_generator_keeps_whole_clips_of_its_settings_only(tmp_path, capsys):
  out = tmp_path / 'frames'
  synthetic.generate(out, 6, 2, test=0, size=32, fmt='frames', workers=1)
  annotations = (out / 'something-something-v1-train.csv').read_text()
  folder = out / '20bn-something-something-v1'
  shutil.rmtree(folder / '3')  # as a stop before clip 3 was renamed into place
  (folder / '.4.partial').mkdir()
  (folder / '.4.partial' / '00001.jpg').write_bytes(b'half a clip')
  synthetic.generate(out, 6, 2, test=0, size=32, fmt='frames', workers=1)
  assert 'synthetic: resuming in ' in capsys.readouterr().err
  assert (folder / '3').is_dir() and not (folder / '.4.partial').exists()
  assert (out / 'something-something-v1-train.csv').read_text() == annotations
  # Other settings: every clip written again.
  synthetic.generate(out, 6, 2, test=0, size=48, fmt='frames', workers=1)
  assert 'resuming' not in capsys.readouterr().err
  assert video_io.decode_jpeg((folder / '1' / '00001.jpg').read_bytes()).shape[0] == 48
