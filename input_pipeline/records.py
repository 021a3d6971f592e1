"""Prepared records, read without TFDS's feature decoding.

A prepared record is a `tf.train.Example`, TFDS's serialisation of the builders' features:
`frames` (the JPEG bytes of every frame of a video), `label` and `id`. TFDS's data source
turns every feature into NumPy before a transform sees it, about 1 ms a record of 30 frames,
where a training clip decodes 8 of them; `Records` parses the Example and hands the frames
over as they are, in about 0.05 ms (docs/benchmarks.md, "Input pipeline").
"""
from tensorflow_datasets.proto import tf_example_pb2


def parse(serialized: bytes) -> dict:
  """One serialised record -> {'frames': sequence of JPEG bytes, 'label': int, 'id': bytes}."""
  feature = tf_example_pb2.Example.FromString(serialized).features.feature
  return {'frames': feature['frames'].bytes_list.value,
          'label': feature['label'].int64_list.value[0],
          'id': feature['id'].bytes_list.value[0]}


class Records:
  """`records[i]`: the parsed record `i` of a split, from TFDS's data source of raw bytes
  (`builder.as_data_source(split, deserialize_method=RAW_BYTES)`); picklable, as grain's
  worker processes need."""

  def __init__(self, raw_source):
    self._raw = raw_source

  def __len__(self) -> int:
    return len(self._raw)

  def __getitem__(self, index: int) -> dict:
    return parse(self._raw[index])

  def __iter__(self):
    return (self[i] for i in range(len(self)))
