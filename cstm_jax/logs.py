"""Console logs that say what the run does: library INFO chatter (orbax, TFDS) is filtered."""
import logging as pylogging

from absl import logging

NOISY = ('/orbax/', '/tensorflow_datasets/', '/grain/', '/jax/_src/')


class _QuietLibraries(pylogging.Filter):

  def filter(self, record):
    return record.levelno >= pylogging.WARNING or not any(p in record.pathname for p in NOISY)


def quiet_library_logs() -> None:
  """Filters library INFO records; also formats logs the absl way outside `absl.app.run`."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())
