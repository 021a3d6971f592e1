"""grain pipelines over a prepared dataset: training and evaluation iterators.

Training: all records shuffled every epoch, TSN-sampled, multi-scale cropped, flipped with label
swap; each process takes its rows of every global batch (`global batch / process count`), so
the global batches are the same for any process count. Deterministic for a seed; the
iterator's state (`get_state` / `set_state`, or grain's orbax handlers) resumes it batch for
batch.

Evaluation: every record exactly once over all processes; the last batch is padded and
`mask` is 0 on padding; every process yields the same number of batches.

Batches are dicts of NumPy arrays: `clips` uint8 RGB `[B, T, H, W, 3]` (evaluation:
`[B, V, T, H, W, 3]` with V views; the steps normalise them on the device,
`cstm_jax/models/video.py`),
`labels` `[B]` int32, `index` `[B]` int32 (the record's position in its split,
-1 for padding) and, for evaluation, `mask` `[B]` float32.

Functions take a `config.data` block (its keys, defaults and meaning: cstm_jax/config/defaults.py;
this package does not import it).
"""
import dataclasses
import math
import pathlib

import grain
from absl import flags
import numpy as np
import tensorflow_datasets as tfds

from input_pipeline import builders, labels, records, transforms  # noqa: F401 (builders)
from input_pipeline import worker_pools
from cstm_foundation import paths
from cstm_foundation.errors import ConfigError, MissingFile


def open_split(config, split: str):
  """The records of a prepared split (`records.Records`: `frames`, `label`, `id`) and the
  dataset's class names."""
  data_dir = paths.expand(config.data_dir)
  if paths.is_remote(data_dir):
    raise ConfigError(
        f'data_dir={data_dir}: prepared datasets are read from a local disk or a mounted '
        'bucket, not from gs:// paths. Copy the dataset to each host: gcloud storage cp -r '
        f'{data_dir.rstrip("/")}/{config.name} ~/tensorflow_datasets/ and pass '
        '--config.data.data_dir=~/tensorflow_datasets; or mount the bucket with gcsfuse '
        '(gcsfuse --implicit-dirs BUCKET /mnt/BUCKET) and pass the mounted path.')
  root = pathlib.Path(data_dir) / config.name
  if not data_dir or not root.is_dir():
    raise MissingFile(
        f'prepared dataset {config.name!r} not found under data_dir={data_dir!r}; '
        'build it with: python -m input_pipeline.prepare --dataset ... --manual_dir ... '
        f'--data_dir {data_dir or "DIR"}')
  builder = tfds.builder(config.name, data_dir=data_dir)
  if split not in builder.info.splits:
    raise ConfigError(
        f'{root}: no split {split!r}; has {sorted(builder.info.splits)}. Prepare the dataset '
        f'with a {split} split (for your own videos: a {split}/ folder beside train/), or set '
        f'--config.data.{"train" if split == config.train_split else "eval"}_split to one of '
        'those')
  return (records.Records(builder.info.splits[split].file_instructions),
          builder.info.features['label'].names)


def local_batch_size(global_batch: int, process_count: int) -> int:
  if global_batch % process_count:
    raise ConfigError(f'global batch {global_batch} does not split over {process_count} processes')
  return global_batch // process_count


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """record -> {'clips': uint8 [T, crop, crop, 3], 'labels': int32}; a grain RandomMap
  callable."""
  num_frames: int
  crop: int
  flip_map: tuple[int, ...] | None  # label after a horizontal flip; None disables flipping
  scales: tuple[float, ...]

  def __call__(self, record, rng: np.random.Generator):
    clip, flipped = transforms.train_clip(record['frames'], self.num_frames, self.crop, rng=rng,
                                          flip=self.flip_map is not None, scales=self.scales)
    label = int(record['label'])
    if flipped:
      label = self.flip_map[label]
    return {'clips': clip, 'labels': np.int32(label), 'index': np.int32(record['index'])}


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """record (or a padding marker) -> {'clips': uint8 [V, T, crop, crop, 3], 'labels', 'mask'}."""
  num_frames: int
  crop: int
  test_scale: int
  num_clips: int
  num_crops: int

  def __call__(self, record):
    views = self.num_clips * self.num_crops
    if record is PADDING or record.get('padding'):
      return {'clips': np.zeros((views, self.num_frames, self.crop, self.crop, 3), np.uint8),
              'labels': np.int32(0), 'index': np.int32(-1), 'mask': np.float32(0)}
    clips = transforms.eval_clips(record['frames'], self.num_frames, self.crop,
                                  test_scale=self.test_scale, num_clips=self.num_clips,
                                  num_crops=self.num_crops)
    return {'clips': clips, 'labels': np.int32(record['label']),
            'index': np.int32(record['index']), 'mask': np.float32(1)}


ONE_VIEW = (1, 1, False)  # one clip (segment centres), the centre crop


def eval_transform(config, views: tuple[int, int, bool] = ONE_VIEW) -> EvalTransform:
  """The evaluation transform of a `config.data` block with `views` (clips, crops, full
  resolution: crops of the test scale), as `evaluation.parse_views` reads `eval.views`."""
  clips, crops, full = views
  return EvalTransform(config.num_frames, config.test_scale if full else config.crop,
                       config.test_scale, clips, crops)


PADDING = {'padding': True}  # grain drops None elements, so padding is a marker record


class IndexedSource:
  """`source[i]` with its position added as `index`, at chosen positions (-1: padding)."""

  def __init__(self, source, indices=None):
    self._source = source
    self._indices = list(range(len(source)) if indices is None else indices)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    index = self._indices[i]
    return PADDING if index < 0 else {**self._source[index], 'index': index}


def flip_label_map(config, class_names) -> tuple[int, ...] | None:
  """Label after a horizontal flip for each label, or None where clips are never flipped
  (`flip=False`, as Jester's configs set: its gestures change meaning in a mirror). With
  `flip_label_swap=False` (TRN's release) a flipped clip keeps its label."""
  if not config.flip:
    return None
  if not config.flip_label_swap:
    return tuple(range(len(class_names)))
  return tuple(labels.flip_label_map(list(class_names)))


def _finish(dataset: grain.MapDataset, config) -> grain.IterDataset:
  iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if config.num_workers > 0:
    if not flags.FLAGS.is_parsed():  # grain reads absl flags; scripts without absl.app lack them
      flags.FLAGS.mark_as_parsed()
    worker_pools.check_spawnable('the loader', in_process='data.num_workers=0')
    iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=config.num_workers, per_worker_buffer_size=config.prefetch),
        worker_init_fn=worker_pools.ignore_interrupts_in_loader)
  return iterable


class ProcessRows(grain.MapDataset):
  """This process's rows of every global batch of `parent`: local element k is global element
  `(k // local) * global_batch + process_index * local + k % local`. The global batches, and
  each element's random augmentation, are therefore the same for any number of processes."""

  def __init__(self, parent: grain.MapDataset, global_batch: int, process_index: int,
               process_count: int):
    super().__init__(parent)
    self._local = local_batch_size(global_batch, process_count)
    self._global, self._offset = global_batch, process_index * self._local

  def __len__(self):
    return len(self._parent) // self._global * self._local

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, row = divmod(index, self._local)
    return self._parent[batch * self._global + self._offset + row]

  def __str__(self):
    return f'ProcessRows(offset={self._offset}, local={self._local}, global={self._global})'


def train_dataset(config, process_index: int = 0, process_count: int = 1,
                  records=None) -> grain.IterDataset:
  """The endless training stream of this process: its rows of each global batch. `iter()` it;
  the iterator checkpoints. `records` replaces the split's records (`open_split`'s)."""
  source, class_names = open_split(config, config.train_split)
  source = source if records is None else records
  if len(source) < config.batch_size:
    raise ConfigError(f'{config.name}/{config.train_split}: {len(source)} videos, fewer than the '
                     f'global batch of {config.batch_size}')
  flip_map = flip_label_map(config, class_names)
  transform = TrainTransform(config.num_frames, config.crop, flip_map, tuple(config.scales))
  clips = (grain.MapDataset.source(IndexedSource(source)).seed(config.seed).shuffle()
           .repeat(None).random_map(transform))
  mine = ProcessRows(clips, config.batch_size, process_index, process_count)
  batch = local_batch_size(config.batch_size, process_count)
  return _finish(mine.batch(batch, drop_remainder=True), config)


def eval_dataset(config, process_index: int = 0, process_count: int = 1, *,
                 views: tuple[int, int, bool] = ONE_VIEW):
  """One pass over the evaluation split with `views` (`eval_transform`); returns (dataset,
  batches per process)."""
  source, _ = open_split(config, config.eval_split)
  batch = local_batch_size(config.eval_batch_size, process_count)
  total = len(source)
  per_process = math.ceil(total / process_count)
  num_batches = math.ceil(per_process / batch)
  mine = list(range(process_index, total, process_count))
  mine += [-1] * (num_batches * batch - len(mine))
  dataset = grain.MapDataset.source(IndexedSource(source, mine)).map(
      eval_transform(config, views)).batch(batch)
  return _finish(dataset, config), num_batches
