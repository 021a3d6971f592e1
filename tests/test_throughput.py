"""The training loop's throughput window: what a log line and metrics.jsonl report."""
import logging

from cstm_jax.train import throughput


def test_the_window_counts_its_steps_clips_and_input_wait(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(throughput.time, 'monotonic', lambda: now[0])
  window = throughput.Window(batch_size=8)
  for wait in (0.5, 0.25):
    window.add_step(wait)
  now[0] = 102.0
  assert window.close() == {'clips_per_s': 8.0, 'input_wait_s': 0.75,
                            'input_wait_fraction': 0.375, 'seconds_per_step': 1.0, 'steps': 2}
  assert (window.steps, window.input_wait_s, window.started) == (0, 0.0, 102.0)  # a new window


def test_an_input_bound_window_warns_at_most_once_an_interval(monkeypatch, caplog):
  now = [1000.0]
  monkeypatch.setattr(throughput.time, 'monotonic', lambda: now[0])
  window = throughput.Window(batch_size=8)
  bound = {'steps': 10, 'input_wait_fraction': 0.5}
  with caplog.at_level(logging.WARNING):
    window.warn_if_input_bound(bound, num_workers=2)
    window.warn_if_input_bound({'steps': 10, 'input_wait_fraction': 0.1}, num_workers=2)
    now[0] += throughput.INPUT_BOUND_WARN_EVERY_S - 1
    window.warn_if_input_bound(bound, num_workers=2)
    now[0] += 1
    window.warn_if_input_bound(bound, num_workers=2)
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 2
  assert warnings[0].startswith('input-bound: the devices waited for data 50% of the last 10 '
                                'steps with 2 loader processes; raise --config.data.num_workers')
