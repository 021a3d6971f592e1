"""Prepared records of a split, read straight from its ArrayRecord shards.

A prepared record is a `tf.train.Example`, TFDS's serialisation of the builders' features:
`frames` (the JPEG bytes of every frame of a video), `label` and `id`. TFDS's data source reads
a record of ~30 frames (about 0.5 MB) through a 32 KiB file buffer and turns every feature into
NumPy, where a training clip decodes 8 frames. Here each shard has a reader with ArrayRecord's
own buffer, and the Example is parsed and its frames handed over as they are
(docs/benchmarks.md, "What makes the loader fast").
"""
import bisect
import ctypes
import itertools
import pathlib

from array_record.python import array_record_module
from google.protobuf import message
from tensorflow_datasets.proto import tf_example_pb2

from cstm_foundation.errors import BadFile, first_line


class DamagedRecord(BadFile):
  """A prepared record that cannot be read (bit rot, a truncated or damaged copy); the message
  names the shard, the record and what to do."""


def damaged(shard: str, position: int, error: Exception) -> DamagedRecord:
  from input_pipeline import builders  # here: builders' module imports the data stack
  problem = first_line(error, 200)
  folder = pathlib.Path(shard).parents[1]  # DATA_DIR/<dataset name>/<version>/<shard>
  dataset = next((key for key, cls in builders.BUILDERS.items() if cls.name == folder.name),
                 'DATASET')
  return DamagedRecord(
      f'{shard}: record {position} cannot be read ({problem}); the prepared dataset is '
      f'damaged: list every damaged record with `python -m input_pipeline.prepare --verify '
      f'--dataset {dataset} --data_dir {folder.parent}`, then prepare it again with --rebuild '
      '(or copy the dataset again)')


def parse(serialized: bytes) -> dict:
  """One serialised record -> {'frames': sequence of JPEG bytes, 'label': int, 'id': bytes}."""
  feature = tf_example_pb2.Example.FromString(serialized).features.feature
  return {'frames': feature['frames'].bytes_list.value,
          'label': feature['label'].int64_list.value[0],
          'id': feature['id'].bytes_list.value[0]}


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
  """Lets glibc's malloc keep freed blocks of up to `mmap_threshold` bytes for reuse.

  By default glibc maps each block above 128 KiB (an adaptive threshold) fresh from the OS and
  returns freed memory at the heap's top, so every record (~0.5 MB), decoded frame (~260 KB)
  and clip (1.2 MB) of the loader costs page faults on first touch (docs/benchmarks.md, "What
  makes the loader fast"). Returns False where there is no glibc.
  """
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (AttributeError, OSError):
    return False
  m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
  return bool(mallopt(m_mmap_threshold, mmap_threshold) and
              mallopt(m_trim_threshold, trim_threshold))


class Records:
  """`records[i]`: record `i` of a split, parsed; `file_instructions` are the split's
  (`builder.info.splits[split].file_instructions`: shard file, skip, take). Readers open on
  first use in each process, so the object pickles into grain's worker processes."""

  def __init__(self, file_instructions):
    self._shards = [(str(f.filename), f.skip) for f in file_instructions]
    self._starts = [0, *itertools.accumulate(f.take for f in file_instructions)]
    self._readers = {}

  def __len__(self) -> int:
    return self._starts[-1]

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} of {len(self)}')
    shard, position = self.locate(index)
    path = self._shards[shard][0]
    try:
      if shard not in self._readers:
        if not self._readers:
          keep_freed_memory()  # once per process: grain's workers read records too
        # Random access: no read-ahead past the record.
        self._readers[shard] = array_record_module.ArrayRecordReader(
            path, 'readahead_buffer_size:0')
      return parse(self._readers[shard].read([position])[0])
    except (RuntimeError, OSError, ValueError, message.DecodeError) as error:
      raise damaged(path, position, error) from error

  def locate(self, index: int) -> tuple[int, int]:
    """(the shard holding record `index`, the record's position inside that shard's file)."""
    shard = bisect.bisect_right(self._starts, index) - 1
    return shard, self._shards[shard][1] + index - self._starts[shard]

  def shard_path(self, shard: int) -> str:
    return self._shards[shard][0]

  def __iter__(self):
    return (self[i] for i in range(len(self)))

  def __getstate__(self):
    return {**self.__dict__, '_readers': {}}
