"""Console logs that say what the run does: library INFO chatter (orbax, TFDS) is filtered."""
import logging as pylogging
import os

from absl import logging

from cstm_foundation.errors import debugging

NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/jax/_src/')


class _QuietLibraries(pylogging.Filter):
  """Drops library INFO records, and orbax's tracebacks of a failed asynchronous save: each of
  its saver threads logs its own, and the run reports the failure once, as one line
  (`checkpoints.CheckpointNotWritten`). CSTM_DEBUG=1 keeps them."""

  def filter(self, record):
    orbax_save_error = record.levelno >= pylogging.ERROR and (
        (record.exc_info and '/orbax/' in record.pathname) or  # its saver threads
        (record.name == 'asyncio' and 'orbax' in record.getMessage()))  # its writes' tasks
    if orbax_save_error:
      return debugging()
    if record.name.endswith('type_handler_registry') or 'Type handler registry type' in str(
        record.msg):  # orbax, at every start: its own two registrations of jax.Array
      return debugging()
    return record.levelno >= pylogging.WARNING or not any(p in record.pathname for p in NOISY)


def quiet_library_logs() -> None:
  """Filters library INFO records (and orbax's logs of a failed checkpoint save); also formats
  logs the absl way outside `absl.app.run`."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())


# Loader worker processes (grain) put batches in shared memory. Those still in flight when the
# loader is closed are removed by multiprocessing's resource tracker at exit, which warns about
# each such "leak"; the tracker is its own process and takes its warning filters from here.
_TRACKER_WARNING = 'ignore:resource_tracker:UserWarning'


def quiet_exit_warnings() -> None:
  """Silences the resource tracker's warning about loader batches it frees at exit (before any
  loader process starts; CSTM_DEBUG=1 keeps it)."""
  if debugging():
    return
  current = os.environ.get('PYTHONWARNINGS', '')
  if _TRACKER_WARNING not in current.split(','):
    os.environ['PYTHONWARNINGS'] = ','.join(filter(None, [current, _TRACKER_WARNING]))
