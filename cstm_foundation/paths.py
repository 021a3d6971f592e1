"""One path layer for everything a run reads and writes: local folders and `gs://` alike.

Paths are `etils.epath.Path` (what orbax and TFDS use; `gs://` goes through gcsfs). `resolve`
expands `~` and environment variables, which the shell leaves alone in `--flag=~/x` and in
config files. Cloud Storage objects cannot be appended to, so the growing files of a run
(TensorBoard events, `metrics.jsonl`) are kept in memory and the whole object is rewritten on
each flush; they are small (scalars only).
"""
import io
import os

from etils import epath

from cstm_foundation.errors import ConfigError

REMOTE_SCHEMES = ('gs://',)


def expand(text) -> str:
  """`~` and `$VAR` / `${VAR}` expanded; '' stays ''. (The shell leaves `~` alone inside
  `--flag=~/x`, and config files hold paths as plain strings.)"""
  return os.path.expanduser(os.path.expandvars(str(text))) if text else ''


def is_remote(path) -> bool:
  return str(path).startswith(REMOTE_SCHEMES)


def resolve(path) -> epath.Path:
  """`path` with `~` and variables expanded; a local path made absolute."""
  text = expand(str(path))
  if not text:
    raise ConfigError('empty path')
  return epath.Path(text) if is_remote(text) else epath.Path(os.path.abspath(text))


def write_text(path, text: str) -> None:
  """Writes a whole file, creating its folder (a no-op on Cloud Storage). Atomic: a reader (or
  a kill) never sees half a file; locally through a temporary file renamed over it, and a
  Cloud Storage object appears whole by itself."""
  path = resolve(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if is_remote(path):
    path.write_text(text)
    return
  partial = path.with_name(f'.{path.name}.partial')
  partial.write_text(text)
  os.replace(partial, path)


class GrowingFile:
  """A file that only grows: appended to locally, rewritten whole on Cloud Storage.

  Opening continues an existing file (a resumed run keeps its earlier lines).
  """

  def __init__(self, path):
    self.path = resolve(path)
    self.remote = is_remote(self.path)
    if self.remote:
      self._buffer = io.BytesIO(self.path.read_bytes() if self.path.exists() else b'')
      self._buffer.seek(0, io.SEEK_END)
    else:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      self._file = open(self.path, 'ab')

  def write(self, data: bytes) -> None:
    (self._buffer if self.remote else self._file).write(data)

  def flush(self) -> None:
    if self.remote:
      self.path.write_bytes(self._buffer.getvalue())
    else:
      self._file.flush()

  def close(self) -> None:
    self.flush()
    if not self.remote:
      self._file.close()


class _EventFiles:
  """tensorboardX writer factory for `gs://` log dirs, through this module's path layer."""

  def open(self, path):
    return GrowingFile(path)

  def directory_check(self, path):
    pass  # Cloud Storage has no folders to create


def register_tensorboard_filesystems() -> None:
  """Makes tensorboardX write `gs://` event files through epath (not google-cloud-storage)."""
  from tensorboardX import record_writer
  for scheme in REMOTE_SCHEMES:
    record_writer.register_writer_factory(scheme.split(':')[0], _EventFiles())
