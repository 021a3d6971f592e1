"""The decoding work of `prepare`, kept on disk so that a stop loses almost none of it.

`prepare` decodes every video of a split into JPEG frames (hours for SSv2's 220,847 videos),
then TFDS writes the dataset's shards from them. The decoded videos go first into work shards
beside the dataset, each finished one renamed into place, and the same command continues from
them after any stop (SIGTERM, SIGINT, SIGKILL, a lost VM):

  DATA_DIR/<name>/<version>.unfinished/
    work.json                         what the work is for: the options, and per split its count
                                      and a digest of its videos (ids, paths, labels), so other
                                      annotations or options are never mixed in
    <split>/<first>-<last>.json       videos first..last (their places in the split's list):
                                      videos, frames and bytes written, and the skipped ones
    <split>/<first>-<last>.array_record  one record per video: its frames, or why it was skipped
    <split>/*.tmp                     a shard being written when the run was killed (removed)

A shard counts once its `.array_record` is there; its `.json` is written before it. A shard is
finished every `--save_every_s` seconds (10) or SHARD_VIDEOS videos, so a SIGKILL loses at most
that much decoding; a stop request (or a worker's death) finishes the one being written. Once TFDS has written the
dataset from the work and `prepare_report.json` is beside it, the folder is removed.
"""
import hashlib
import json
import os
import pathlib
import re
import shutil
import struct
import time
from typing import Callable, Iterator, Union

from absl import logging
from array_record.python import array_record_module

from cstm_foundation import stopping
from cstm_foundation.errors import ConfigError

SUFFIX = '.unfinished'
SHARD_VIDEOS = 512  # a shard holds at most this many videos (and `save_every_s` of decoding)
SAVE_EVERY_S = 10.0  # the default: a SIGKILL loses at most this much decoding
_NAME = re.compile(r'(\d{8})-(\d{8})\.array_record')
_FRAMES, _SKIPPED = b'F', b'S'
RESUMES = 'the same command resumes'

Result = Union[list, str]  # the JPEG bytes of every frame, or why the video was skipped


def pack(result: Result) -> bytes:
  """One work record: b'F', the frame count and lengths (uint32), the frames; or b'S' and the
  reason the video was skipped."""
  if isinstance(result, str):
    return _SKIPPED + result.encode()
  header = struct.pack(f'<I{len(result)}I', len(result), *map(len, result))
  return b''.join([_FRAMES, header, *result])


def unpack(record: bytes) -> Result:
  if record[:1] == _SKIPPED:
    return record[1:].decode()
  (count,) = struct.unpack_from('<I', record, 1)
  lengths = struct.unpack_from(f'<{count}I', record, 5)
  frames, offset = [], 5 + 4 * count
  for length in lengths:
    frames.append(record[offset:offset + length])
    offset += length
  return frames


def digest(rows) -> str:
  """A split's identity: the SHA-256 of its (id, path, label) rows, in order."""
  return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


class Work:
  """The work folder of the dataset `dataset_folder` (DATA_DIR/<name>/<version>)."""

  def __init__(self, dataset_folder: pathlib.Path):
    self.folder = dataset_folder.parent / (dataset_folder.name + SUFFIX)

  def exists(self) -> bool:
    return (self.folder / 'work.json').exists()

  def remove(self) -> None:
    shutil.rmtree(self.folder, ignore_errors=True)

  def begin(self, options: dict, splits: dict[str, dict], *, rebuild: bool) -> None:
    """Takes up the work left for `options` and `splits` ({split: {'videos': count, 'digest':
    `digest` of its rows}}), or starts it. Work for other options is refused unless
    `rebuild`; work for other annotations is started again."""
    wanted = {'options': options, 'splits': splits}
    if self.exists():
      earlier = json.loads((self.folder / 'work.json').read_text())
      if earlier == wanted:
        return
      if earlier.get('options') != options and not rebuild:
        listed = ', '.join(f'{k} {earlier.get("options", {}).get(k)!r} then, {v!r} now'
                           for k, v in options.items()
                           if earlier.get('options', {}).get(k) != v)
        raise ConfigError(f'{self.folder} holds an unfinished preparation with other options '
                          f'({listed}): run it with those options to finish it, or pass '
                          '--rebuild to start again with these')
      logging.warning('%s: %s changed since the unfinished preparation began; starting again',
                      self.folder, 'the options' if earlier.get('options') != options else
                      'the annotations')
    self.remove()
    self.folder.mkdir(parents=True)
    _write_atomically(self.folder / 'work.json', json.dumps(wanted, indent=1))

  def shards(self, split: str) -> list[tuple[int, int]]:
    """The finished shards of `split`, as (first, last) ranges in order; leftovers of a killed
    write are removed."""
    folder = self.folder / split
    if not folder.is_dir():
      return []
    for leftover in folder.glob('*.tmp'):
      leftover.unlink()
    ranges = []
    for path in folder.glob('*.json'):
      match = _NAME.fullmatch(path.with_suffix('.array_record').name)
      if match and path.with_suffix('.array_record').exists():
        ranges.append((int(match.group(1)), int(match.group(2))))
      else:  # its shard was not renamed into place: killed between the two
        path.unlink()
    return sorted(ranges)

  def encode(self, split: str, jobs: list, run: Callable[[list], Iterator[Result]], *,
             label: str, progress, save_every_s: float = SAVE_EVERY_S) -> None:
    """Makes sure every job of `split` has its result in a finished shard: the jobs no shard
    holds go through `run` (which yields their results in order), into new shards, each
    finished after `save_every_s` (or SHARD_VIDEOS videos). `progress.update()` once per job,
    done before or now."""
    done = {i for first, last in self.shards(split) for i in range(first, last + 1)}
    progress.update(len(done))
    todo = [i for i in range(len(jobs)) if i not in done]
    if done:
      print(f'{label}: resuming from {self.folder}: {len(done)} of {len(jobs)} videos are '
            f'prepared, {len(todo)} to go', file=progress.stream, flush=True)
    if not todo:
      return
    (self.folder / split).mkdir(parents=True, exist_ok=True)
    shard = None
    try:
      for position, result in enumerate(run([jobs[i] for i in todo])):
        index = todo[position]
        if shard is not None and (index != shard.last + 1 or shard.full()):
          finished, shard = shard, None
          finished.finish()
        if shard is None:
          shard = _Shard(self.folder / split, index, save_every_s)
        shard.add(index, result)
        progress.update()
    except BaseException as error:
      if shard is not None:  # every video in it is done (a stop, a worker's death): kept
        shard.close(keep=True)
      if not isinstance(error, stopping.Stopped):
        raise
      kept = sum(last - first + 1 for first, last in self.shards(split))
      raise stopping.Stopped(stopping.message(
          f'{label} after {kept} of {len(jobs)} videos ({self.folder} keeps them)',
          resumes=RESUMES)) from None
    if shard is not None:
      shard.finish()

  def results(self, split: str) -> Iterator[Result]:
    """Every job's result of `split`, in order."""
    for first, last in self.shards(split):
      reader = array_record_module.ArrayRecordReader(
          os.fspath(self.folder / split / f'{first:08d}-{last:08d}.array_record'))
      try:
        for position in range(last - first + 1):
          yield unpack(reader.read([position])[0])
      finally:
        reader.close()

  def summary(self, split: str) -> dict:
    """Videos, frames and bytes written and the skipped jobs ([index, reason]) of `split`."""
    total = {'videos': 0, 'frames': 0, 'bytes': 0, 'skipped': []}
    for first, last in self.shards(split):
      part = json.loads((self.folder / split / f'{first:08d}-{last:08d}.json').read_text())
      for key in ('videos', 'frames', 'bytes', 'skipped'):
        total[key] += part[key]
    return total


class Lock:
  """`with Lock(folder):` this process alone prepares the dataset in `folder` (DATA_DIR/<name>):
  an exclusive `flock` on `folder/.prepare.lock`, which the kernel drops when the process ends,
  however it ends (no stale lock after a SIGKILL). A second `prepare` into the same folder is
  refused in one line naming the first."""

  def __init__(self, folder: pathlib.Path):
    self.path = folder / '.prepare.lock'

  def __enter__(self):
    import fcntl
    import socket
    self.path.parent.mkdir(parents=True, exist_ok=True)
    self.file = open(self.path, 'a+')
    try:
      fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self.file.seek(0)
      holder = self.file.read().strip() or 'another process'
      self.file.close()
      raise ConfigError(f'{self.path.parent}: {holder} is preparing this dataset now; wait for '
                        'it to end (or stop it: the same command resumes its work)') from None
    self.file.seek(0)
    self.file.truncate()
    self.file.write(f'prepare (pid {os.getpid()} on {socket.gethostname()})')
    self.file.flush()
    return self

  def __exit__(self, *exc):
    self.file.close()  # the lock goes with it
    return False


class _Shard:
  """A work shard being written: records in a `.tmp` file, renamed once finished."""

  def __init__(self, folder: pathlib.Path, first: int, save_every_s: float):
    self.folder, self.first, self.last = folder, first, first - 1
    self.save_every_s = save_every_s
    self.temporary = folder / f'{first:08d}.tmp'
    self.writer = array_record_module.ArrayRecordWriter(os.fspath(self.temporary),
                                                        'group_size:1,uncompressed')
    self.started = time.monotonic()
    self.counts = {'videos': 0, 'frames': 0, 'bytes': 0, 'skipped': []}

  def add(self, index: int, result: Result) -> None:
    self.writer.write(pack(result))
    self.last = index
    if isinstance(result, str):
      self.counts['skipped'].append([index, result])
    else:
      self.counts['videos'] += 1
      self.counts['frames'] += len(result)
      self.counts['bytes'] += sum(map(len, result))

  def full(self) -> bool:
    return (self.last - self.first + 1 >= SHARD_VIDEOS or
            time.monotonic() - self.started >= self.save_every_s)

  def finish(self) -> None:
    self.writer.close()
    name = f'{self.first:08d}-{self.last:08d}'
    with open(self.temporary, 'rb+') as f:
      os.fsync(f.fileno())
    _write_atomically(self.folder / f'{name}.json', json.dumps(self.counts))
    os.replace(self.temporary, self.folder / f'{name}.array_record')
    _sync_folder(self.folder)

  def close(self, *, keep: bool) -> None:
    """Finishes the shard when `keep` and it can be written; else removes it."""
    if keep and self.last >= self.first:
      try:
        self.finish()
        return
      except OSError as error:  # a full disk: the next run decodes these again
        logging.warning('%s: not kept (%s)', self.temporary, error)
    try:
      self.writer.close()
    except (OSError, RuntimeError):
      pass
    self.temporary.unlink(missing_ok=True)


def _write_atomically(path: pathlib.Path, text: str) -> None:
  temporary = path.with_name(path.name + '.tmp')
  with open(temporary, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temporary, path)


def _sync_folder(folder: pathlib.Path) -> None:
  descriptor = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)

