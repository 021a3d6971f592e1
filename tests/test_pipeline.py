"""The grain pipelines over a prepared synthetic dataset."""
import io
import pathlib

import numpy as np
import pytest

from configs import jester_8f
from cstm_foundation import progress
from cstm_jax.config import defaults
from input_pipeline import pipeline, synthetic


def data_config(**overrides):
  """The base config's data block with `overrides`."""
  config = defaults.get_config().data
  config.update(overrides)
  return config


@pytest.fixture
def config(prepared_ssv2):
  data_dir, _ = prepared_ssv2
  return data_config(data_dir=str(data_dir), num_frames=4, crop=32, test_scale=48, batch_size=4,
                     eval_batch_size=6, num_workers=0)


def test_progress_in_a_log_file_is_whole_lines():
  log = io.StringIO()  # not a terminal: a line at the first update, every 10 s, and at the end
  with progress.Progress(3, 'videos', 'prepare train', stream=log) as bar:
    for _ in range(3):
      bar.update()
  lines = log.getvalue().splitlines()
  assert '\r' not in log.getvalue() and len(lines) == 2
  assert lines[0].startswith('prepare train:  33%|') and ' 1/3 [' in lines[0]
  assert lines[1].startswith('prepare train: 100%|') and ' 3/3 [' in lines[1]


def take(dataset, n):
  iterator = iter(dataset)
  return [next(iterator) for _ in range(n)]


def test_training_batches(config):
  batch = take(pipeline.train_dataset(config), 1)[0]
  # uint8 RGB, a quarter of float32's bytes: the steps normalise on the device.
  assert batch['clips'].shape == (4, 4, 32, 32, 3) and batch['clips'].dtype == np.uint8
  assert batch['labels'].dtype == np.int32 and set(batch['labels']) <= set(range(12))
  assert batch['clips'].max() > 100  # pixels, not normalised values


def test_deterministic_for_a_seed_and_resumable(config):
  first = take(pipeline.train_dataset(config), 3)
  again = take(pipeline.train_dataset(config), 3)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['clips'], b['clips'])
  config.seed = 1
  assert not np.array_equal(take(pipeline.train_dataset(config), 1)[0]['index'],
                            first[0]['index'])
  config.seed = 0
  iterator = iter(pipeline.train_dataset(config))
  next(iterator), next(iterator)
  state = iterator.get_state()
  expected = next(iterator)
  resumed = iter(pipeline.train_dataset(config))
  resumed.set_state(state)
  got = next(resumed)
  np.testing.assert_array_equal(got['clips'], expected['clips'])
  np.testing.assert_array_equal(got['labels'], expected['labels'])


def test_worker_processes_give_the_same_batches_and_resume(config):
  in_process = take(pipeline.train_dataset(config), 3)
  config.num_workers = 2
  iterator = iter(pipeline.train_dataset(config))
  batch = next(iterator)
  np.testing.assert_array_equal(batch['clips'], in_process[0]['clips'])
  state = iterator.get_state()
  resumed = iter(pipeline.train_dataset(config))
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['index'], in_process[1]['index'])


def test_processes_split_the_global_batches_of_one_process(config):
  config.batch_size = 4  # global: 2 per process
  one = take(pipeline.train_dataset(config), 4)
  two = [take(pipeline.train_dataset(config, process, 2), 4) for process in range(2)]
  for step, batch in enumerate(one):
    for key in ('clips', 'labels', 'index'):  # the same clips, augmented the same way
      np.testing.assert_array_equal(
          np.concatenate([two[0][step][key], two[1][step][key]]), batch[key])
  epoch = {int(i) for b in one[:3] for i in b['index']}  # 12 videos, 3 global batches
  assert epoch == set(range(12))


def test_flip_swaps_left_right_labels(config):
  source, class_names = pipeline.open_split(config, 'train')
  flip_map = pipeline.flip_label_map(config, class_names)
  jester = jester_8f.get_config().data  # Jester's gestures change meaning in a mirror
  assert pipeline.flip_label_map(jester, class_names) is None
  assert pipeline.flip_label_map(data_config(flip=False), class_names) is None
  left_to_right = class_names.index('Moving something from left to right')
  assert flip_map[left_to_right] == class_names.index('Moving something from right to left')
  turn = class_names.index('Turning something clockwise')
  assert flip_map[turn] == class_names.index('Turning something counterclockwise')
  record = next({**r, 'index': 0} for r in source if r['label'] == left_to_right)
  make = lambda flip: pipeline.TrainTransform(4, 32, flip, (1.0, 0.875))
  swapped = 0
  for seed in range(16):
    flipped = make(flip_map)(record, np.random.default_rng(seed))
    plain = make(None)(record, np.random.default_rng(seed))
    mirrored = np.array_equal(flipped['clips'], plain['clips'][:, :, ::-1])
    assert mirrored == (flipped['labels'] == flip_map[left_to_right])
    assert mirrored or np.array_equal(flipped['clips'], plain['clips'])
    swapped += mirrored
  assert 0 < swapped < 16


@pytest.mark.parametrize('clips, crops', [(1, 1), (2, 3)])
def test_evaluation_visits_every_example_once(config, clips, crops):
  counts, batches_per_process = {}, []
  for process in range(2):
    dataset, num_batches = pipeline.eval_dataset(config, process, 2, views=(clips, crops, False))
    batches = list(dataset)
    assert len(batches) == num_batches == 2  # 8 videos, 4 per process, local batch 3
    batches_per_process.append(len(batches))
    for b in batches:
      assert b['clips'].shape == (3, clips * crops, 4, 32, 32, 3)
      for index, mask in zip(b['index'], b['mask']):
        if mask:
          counts[int(index)] = counts.get(int(index), 0) + 1
        else:
          assert index == -1
  assert counts == {i: 1 for i in range(8)}


@pytest.mark.parametrize('views, shape', [('1x10', (10, 32)), ('2x5', (10, 32)),
                                          ('2x3full', (6, 48))])
def test_a_test_protocol_gives_its_views(config, views, shape):
  from cstm_jax.train import evaluation
  dataset, _ = pipeline.eval_dataset(config, 0, 1, views=evaluation.parse_views(views))
  batch = next(iter(dataset))
  count, side = shape  # full resolution: crops of the test scale (48 here), not the crop
  assert batch['clips'].shape == (6, count, 4, side, side, 3)


def test_a_test_protocol_that_no_original_has_is_refused():
  from cstm_jax.train import evaluation
  for views in ('1x2', '3x1', '2x3half', '1x'):
    with pytest.raises(ValueError, match=f'views {views!r}'):
      evaluation.parse_views(views)


def test_configuration_errors(config, tmp_path):
  with pytest.raises(ValueError, match='does not split over 3 processes'):
    pipeline.train_dataset(config, 0, 3)
  config.data_dir = str(tmp_path)
  with pytest.raises(FileNotFoundError, match='python -m input_pipeline.prepare'):
    pipeline.train_dataset(config)
  config.data_dir = 'gs://bucket/tfds'
  with pytest.raises(ValueError, match='gcloud storage cp -r gs://bucket/tfds/something_some'):
    pipeline.train_dataset(config)


def test_data_dir_expands_home_and_variables(config, monkeypatch):
  data_dir = pathlib.Path(config.data_dir)
  monkeypatch.setenv('HOME', str(data_dir.parent))
  monkeypatch.setenv('PREPARED', data_dir.name)
  for spelling in (f'~/{data_dir.name}', '~/$PREPARED', '${HOME}/${PREPARED}'):
    config.data_dir = spelling
    source, names = pipeline.open_split(config, 'train')
    assert len(source) == len(names) == 12


def test_synthetic_classes_pair_up_under_time_reversal():
  assert len(synthetic.class_names()) == len(synthetic.MOTIONS)
  kinds = {}
  for kind, direction in synthetic.MOTIONS:
    kinds.setdefault(kind, []).append(direction)
  assert all(sorted(d) == [-1, 1] for k, d in kinds.items() if k not in ('pretend', 'still'))


def test_loader_benchmark_on_a_prepared_dataset(prepared_ssv2, tmp_path):
  """`python -m input_pipeline.loader_benchmark --data_dir ...`: clips/s, bytes per clip and the
  stage breakdown, in JSON and in the markdown section it replaces."""
  import json
  from input_pipeline import loader_benchmark, records
  assert records.keep_freed_memory()  # glibc here
  doc = tmp_path / 'benchmarks.md'
  doc.write_text('# Benchmarks\n\n## Input pipeline\n\nold\n\n## Next\n\nkept\n')
  assert loader_benchmark.main([
      '--data_dir',
      str(prepared_ssv2[0]), '--batches', '2', '--workers', '0', '--batch', '4', '--crop', '32',
      '--stage_clips', '8', '--json',
      str(tmp_path / 'b.json'), '--markdown',
      str(doc)
  ]) == 0
  result = json.loads((tmp_path / 'b.json').read_text())
  row, = result['loader']
  assert row['bytes_per_clip'] == 8 * 32 * 32 * 3 and row['clips_per_s'] > 0
  assert set(result['stages']['ms_per_clip']) == {'read', 'decode', 'crop_resize_flip', 'batch'}
  text = doc.read_text()
  assert 'old' not in text and text.endswith('## Next\n\nkept\n') and '168,913' in text
  tiled = loader_benchmark.Tiled(list('abc'), 7)
  assert len(tiled) == 7 and tiled[6] == 'a' and len(loader_benchmark.Tiled(list('abc'), 2)) == 3
