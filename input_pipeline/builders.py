"""TFDS builders (ArrayRecord, no TensorFlow) for SSv2, SSv1, Jester and generic video folders.

One record per video: `frames` (JPEG bytes of every frame, short side resized), `label` and
`id`; class names live in the dataset info. Videos are decoded in parallel worker processes
into resumable work shards (`encode`, `input_pipeline/prepare_work.py`), which TFDS then writes
out; a video that cannot be read is skipped, counted and reported, and the build carries on.
The ArrayRecord shards are written uncompressed. Read back with
`tfds.data_source(name, data_dir=..., split=...)` or `input_pipeline.records`.
"""
import multiprocessing
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from array_record.python import array_record_module
from tensorflow_datasets.core import file_adapters

from cstm_foundation import stopping
from cstm_foundation.progress import Progress
from input_pipeline import labels, video_io, worker_pools

SPLITS = ('train', 'validation')


def _encode_video(job):
  """(path, short_side) -> list of JPEG bytes, or the reason it failed. Runs in a worker."""
  path, short_side = job
  try:
    return video_io.video_to_jpegs(path, short_side)
  except video_io.VideoError as e:
    return str(e)


class UncompressedArrayRecord(file_adapters.ArrayRecordFileAdapter):
  """TFDS's ArrayRecord adapter writing uncompressed shards. TFDS fixes its writer options
  (zstd), but JPEG bytes barely compress, and decompressing was part of each record read's
  cost (docs/benchmarks.md, "Host to device"). Any ArrayRecord reader reads either kind."""

  @classmethod
  def write_examples(cls, path, iterator):
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), 'group_size:1,uncompressed')
    for _, serialized_example in iterator:
      writer.write(serialized_example)
    writer.close()


class VideoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared machinery; subclasses say where the annotations are (`class_names`, `entries`)."""
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'JPEG frames per video, ArrayRecord.'}
  DEFAULT_SHORT_SIDE = 256

  def __init__(self, *, class_names=None, short_side=None, workers=None, **kwargs):
    self._class_names = class_names
    self._short_side = self.DEFAULT_SHORT_SIDE if short_side is None else short_side
    self._workers = workers or multiprocessing.cpu_count()
    self.in_both_splits = []  # ids in the training and the validation split
    self.planned = {}  # `plan`'s, for the splits TFDS writes
    self.work = None  # the decoded videos TFDS writes from (`prepare_work.Work`)
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  def download_and_prepare(self, *args, **kwargs):
    # TFDS looks the adapter of a file format up in this table when it writes a shard.
    table, key = file_adapters.ADAPTER_FOR_FORMAT, file_adapters.FileFormat.ARRAY_RECORD
    original, table[key] = table[key], UncompressedArrayRecord
    try:
      return super().download_and_prepare(*args, **kwargs)
    finally:
      table[key] = original

  @classmethod
  def class_names(cls, manual_dir) -> list[str]:
    raise NotImplementedError

  @classmethod
  def entries(cls, manual_dir, split: str) -> list[labels.VideoEntry]:
    raise NotImplementedError

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            'label': tfds.features.ClassLabel(names=self._class_names),
            'id': tfds.features.Text(),
        }))

  def plan(self, manual_dir) -> dict[str, tuple[list, list]]:
    """Per split with videos: (the entries to decode, the skipped ones as report rows: unknown
    classes). Also notes the ids in both splits (`in_both_splits`)."""
    entries = {split: self.entries(manual_dir, split) for split in SPLITS}
    self.in_both_splits = labels.shared_ids(entries['train'], entries['validation'])
    if self.in_both_splits:
      logging.warning('%d videos are in both the training and the validation split (e.g. %s): '
                      'validation accuracy will be optimistic', len(self.in_both_splits),
                      ', '.join(self.in_both_splits[:5]))
    known = set(self._class_names)
    planned = {}
    for split, items in entries.items():
      if items:
        planned[split] = ([e for e in items if e.label in known],
                          [skip_row(split, e, f'unknown class {e.label!r}') for e in items
                           if e.label not in known])
    return planned

  def encode(self, split: str, work, readable: list, *, resumes: str,
             save_every_s: float) -> None:
    """Decodes the videos `readable` of `split` in worker processes into `work`
    (`prepare_work.Work`, a shard every `save_every_s`), taking up what it already holds."""
    jobs = [(str(e.path), self._short_side) for e in readable]
    what = f'preparing {self.name} {split}'
    run = lambda todo: worker_pools.imap(_encode_video, todo, workers=self._workers,
                                         what=f'{what} (videos)', resumes=resumes)
    with Progress(len(jobs), 'videos', f'{self.name} {split}') as bar:
      work.encode(split, jobs, run, label=what, progress=bar, save_every_s=save_every_s)

  def _split_generators(self, dl_manager):
    del dl_manager  # the videos were decoded into `self.work` (`encode`)
    return {split: self._generate_examples(split, readable)
            for split, (readable, _) in self.planned.items()}

  def _generate_examples(self, split, readable):
    for entry, result in zip(readable, self.work.results(split)):
      if stopping.requested():
        raise stopping.Stopped(stopping.message(
            f'writing the {self.name} dataset from {self.work.folder}',
            resumes='the same command resumes'))
      if not isinstance(result, str):
        yield entry.video_id, {'frames': result, 'label': entry.label, 'id': entry.video_id}


def skip_row(split: str, entry, reason: str) -> dict:
  return {'split': split, 'id': entry.video_id, 'path': str(entry.path), 'reason': reason}


class SomethingSomethingV2(VideoBuilder):
  """Something-Something v2: webm videos (VP9, 12 fps), 174 classes."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download Something-Something v2 (20bn-something-something-v2/*.webm and the '
      'something-something-v2-{labels,train,validation}.json files) into the manual dir.')

  @classmethod
  def class_names(cls, manual_dir):
    return labels.read_ssv2_classes(manual_dir)

  @classmethod
  def entries(cls, manual_dir, split):
    return labels.read_ssv2_split(manual_dir, split)


class _FrameFolders(VideoBuilder, skip_registration=True):
  LAYOUT = ''
  DEFAULT_SHORT_SIDE = 0  # keep the native frames

  @classmethod
  def class_names(cls, manual_dir):
    return labels.read_frames_classes(manual_dir, cls.LAYOUT)

  @classmethod
  def entries(cls, manual_dir, split):
    return labels.read_frames_split(manual_dir, cls.LAYOUT, split)


class SomethingSomethingV1(_FrameFolders):
  """Something-Something v1: JPEG frame folders (12 fps, 100 px high), 174 classes."""
  LAYOUT = 'ssv1'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put 20bn-something-something-v1/<id>/00001.jpg ... and the '
      'something-something-v1-{labels,train,validation}.csv files into the manual dir.')


class Jester(_FrameFolders):
  """Jester: JPEG frame folders, 27 hand-gesture classes."""
  LAYOUT = 'jester'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put 20bn-jester-v1/<id>/00001.jpg ... and the jester-v1-{labels,train,validation}.csv '
      'files into the manual dir.')


class VideoFolder(VideoBuilder):
  """Your own videos: `<split>/<class>/<video>` folders, `<split>.csv` files of `path,label`,
  or plain `<class>/<video>` folders (all training)."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Lay videos (files or JPEG frame folders) out as train/<class>/<video> and '
      'validation/<class>/<video>, or list them in train.csv / validation.csv as path,label.')

  @classmethod
  def entries(cls, manual_dir, split):
    root = pathlib.Path(manual_dir)
    if (root / split).is_dir():
      return labels.read_folder_dataset(root / split)
    if (root / f'{split}.csv').exists():
      return labels.read_folder_dataset(root, f'{split}.csv')
    has_splits = any((root / s).is_dir() or (root / f'{s}.csv').exists() for s in SPLITS)
    return labels.read_folder_dataset(root) if split == 'train' and not has_splits else []

  @classmethod
  def class_names(cls, manual_dir):
    names = {e.label for split in SPLITS for e in cls.entries(manual_dir, split)}
    if not names:
      raise labels.AnnotationError(manual_dir, 'no videos found')
    return sorted(names)


BUILDERS = {'ssv2': SomethingSomethingV2, 'ssv1': SomethingSomethingV1, 'jester': Jester,
            'folder': VideoFolder}
