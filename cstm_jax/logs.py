"""Console logs that say what the run does: library INFO chatter (orbax, TFDS) is filtered."""
import logging as pylogging

from absl import logging

from input_pipeline.errors import debugging

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
    return record.levelno >= pylogging.WARNING or not any(p in record.pathname for p in NOISY)


def quiet_library_logs() -> None:
  """Filters library INFO records (and orbax's logs of a failed checkpoint save); also formats
  logs the absl way outside `absl.app.run`."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())
