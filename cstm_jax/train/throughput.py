"""The training loop's throughput window: clips/s, the time spent waiting for input, and the
warning that a run is input-bound."""
import time

from absl import logging

from input_pipeline import workers

# A window whose wall time went this much to waiting for batches is input-bound.
INPUT_BOUND_FRACTION = 0.2
INPUT_BOUND_WARN_EVERY_S = 600.0


class Window:
  """Steps, their input wait and their wall time since the window last started. `restart` after
  anything that is not training (compiling, evaluating, logging)."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size
    self._warned_at = -INPUT_BOUND_WARN_EVERY_S
    self.restart()

  def restart(self) -> None:
    self.started, self.steps, self.input_wait_s = time.monotonic(), 0, 0.0

  def add_step(self, input_wait_s: float) -> None:
    self.steps += 1
    self.input_wait_s += input_wait_s

  def close(self) -> dict:
    """The window's figures (call it once its last step has finished), then a new window."""
    seconds = max(time.monotonic() - self.started, 1e-9)
    figures = {'clips_per_s': self.steps * self.batch_size / seconds,
               'input_wait_s': self.input_wait_s,
               'input_wait_fraction': self.input_wait_s / seconds,
               'seconds_per_step': seconds / max(self.steps, 1), 'steps': self.steps}
    self.restart()
    return figures

  def warn_if_input_bound(self, figures: dict, num_workers: int) -> None:
    """Warns that the run is input-bound, naming the setting to raise, at most once every
    `INPUT_BOUND_WARN_EVERY_S`."""
    now = time.monotonic()
    if (not figures['steps'] or figures['input_wait_fraction'] <= INPUT_BOUND_FRACTION
        or now - self._warned_at < INPUT_BOUND_WARN_EVERY_S):
      return
    self._warned_at = now
    logging.warning('input-bound: the devices waited for data %.0f%% of the last %d steps with '
                    '%d loader processes; raise --config.data.num_workers (cores: %d) or prepare '
                    'the data on a faster local disk', 100 * figures['input_wait_fraction'],
                    figures['steps'], num_workers, workers.usable_cores())
