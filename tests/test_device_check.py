"""The one-call device check at smoke sizes on the CPU (so it works the day a GPU is lent), and
the pieces it reports on: the compilation cache, the loader-process rule, the batch prefetcher
and the layout comparison."""
import json
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from cstm_jax.distributed import compile_cache
from tools import conv_layout_check
from tools import device_check as device_check_tool
from input_pipeline import workers
from input_pipeline.prefetch import Prefetched

ROOT = pathlib.Path(__file__).resolve().parent.parent


def device_check(out, *args, timeout=600):
  return subprocess.run([sys.executable, '-m', 'tools.device_check', f'--out={out}',
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_smoke_device_check_runs_main_py_end_to_end_and_the_loader(tmp_path):
  # All four parts run at smoke sizes in `make test-floor` (make device-check-image: the GPU
  # machines' jax, as their image runs the script), which fails on any failed part; here the
  # two that run main.py and the loader. The layout check and the benchmark's steps are tested
  # on their own (below, tests/test_benchmark.py).
  done = device_check(tmp_path, '--smoke', '--parts=end_to_end,loader')
  assert done.returncode == 0, done.stdout + done.stderr
  report = json.loads((tmp_path / 'device_cpu_smoke.json').read_text())
  assert {'device', 'jax', 'jaxlib', 'date', 'cores'} <= set(report)
  parts = report['parts']
  assert [parts[p]['status'] for p in ('end_to_end', 'loader')] == ['done'] * 2

  # main.py end to end, then the same command resumed: its train step comes from the cache.
  e2e = parts['end_to_end']
  assert e2e['cold']['exit'] == e2e['warm']['exit'] == 0
  assert e2e['cold']['compile_cache'] == 'compiled, not in the compilation cache'
  assert e2e['warm']['compile_cache'] == 'from the compilation cache'
  assert e2e['warm_over_cold'] < 1
  assert e2e['cold']['clips_per_s'] > 0 and 0 <= e2e['cold']['input_wait_fraction'] <= 1
  assert e2e['final_eval']['examples'] == 8

  cores = workers.usable_cores()
  assert [r['workers'] for r in parts['loader']['rows']] == sorted(
      {c for c in (0, 1, 2, 4, 8, cores) if c <= cores})
  assert all(r['clips_per_s'] > 0 for r in parts['loader']['rows'])
  md = (tmp_path / 'device_cpu_smoke.md').read_text()
  for heading in ('## main.py end to end', '## Loader'):
    assert heading in md


def test_the_steps_part_measures_the_most_important_settings_first():
  rows = [(s.model, s.frames, s.batch, s.gpu_conv_nhwc)
          for s in device_check_tool.step_settings(device_check_tool.FULL, devices=1)]
  assert rows[:4] == [('cstm_bninception', 8, 64, False), ('cstm_bninception', 8, 64, True),
                      ('tsn_bninception', 8, 64, False), ('tsn_bninception', 8, 64, True)]
  assert ('cstm_bninception', 16, 64, True) in rows and len(rows) == len(set(rows)) == 14
  smoke = device_check_tool.step_settings(device_check_tool.SMOKE, devices=8)
  assert [(s.frames, s.batch) for s in smoke] == [(4, 16)] * 4  # per-device batch x devices


def test_a_device_check_cut_short_keeps_what_it_measured(tmp_path):
  done = device_check(tmp_path, '--smoke', '--parts=steps', '--budget_s=1')
  assert done.returncode == 0, done.stderr
  steps = json.loads((tmp_path / 'device_cpu_smoke.json').read_text())['parts']['steps']
  assert steps['status'] == 'cut short by its budget'
  assert steps['rows'] == [] and len(steps['skipped']) == 4
  assert 'Not run (budget): cstm_bninception 4f' in (tmp_path / 'device_cpu_smoke.md').read_text()


# --- The compilation cache ------------------------------------------------------------------

def test_the_cache_folder_comes_from_the_config_then_the_environment_then_the_default():
  home = str(pathlib.Path('~').expanduser())
  assert compile_cache.chosen_dir('~/c', {'CSTM_COMPILE_CACHE': '/e'}) == f'{home}/c'
  assert compile_cache.chosen_dir('', {'CSTM_COMPILE_CACHE': '/e',
                                       'JAX_COMPILATION_CACHE_DIR': '/j'}) == '/e'
  assert compile_cache.chosen_dir('', {'JAX_COMPILATION_CACHE_DIR': '/j'}) == '/j'
  assert compile_cache.chosen_dir('', {}) == f'{home}/.cache/cstm_jax/xla'
  assert compile_cache.chosen_dir('off', {'CSTM_COMPILE_CACHE': '/e'}) is None
  assert compile_cache.chosen_dir('', {'CSTM_COMPILE_CACHE': 'OFF'}) is None
  assert compile_cache.chosen_dir('gs://b/cache', {}) == 'gs://b/cache'


def test_a_second_compile_of_a_program_is_a_cache_hit(tmp_path):
  import jax
  import jax.numpy as jnp

  def program(x):
    return jnp.sin(x) * 1.0001 + jnp.cos(x)

  minimum = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)  # keep even fast compiles
  try:
    with compile_cache.using(str(tmp_path / 'cache')):
      counts = []
      for _ in range(2):
        jax.clear_caches()  # as in a new process
        with compile_cache.CompileCounter() as counted:
          jax.jit(program).lower(jnp.ones(3)).compile()
        counts.append(counted.describe())
  finally:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', minimum)
  assert counts == ['compiled, not in the compilation cache', 'from the compilation cache']
  assert list((tmp_path / 'cache').iterdir())


# --- Loader processes -----------------------------------------------------------------------

def test_loader_processes_follow_the_accelerators_cores_and_memory():
  big = dict(local_batch_bytes=10 ** 6, prefetch=2, memory_bytes=10 ** 12)
  assert workers.default_workers(cores=16, accelerators=1, **big) == 8
  assert workers.default_workers(cores=112, accelerators=8, **big) == 64
  assert workers.default_workers(cores=8, accelerators=4, **big) == 7  # a core for the devices
  assert workers.default_workers(cores=2, accelerators=0, **big) == 1  # the CPU trains too
  # 8 workers x 2 batches x 616 MB would need 9.9 GB; a quarter of 16 GB holds 3 of them.
  assert workers.default_workers(cores=112, accelerators=8, local_batch_bytes=616 * 10 ** 6,
                                 prefetch=2, memory_bytes=16 * 10 ** 9) == 3


# --- The batch prefetcher -------------------------------------------------------------------

class Counting:
  """A grain-like iterator of 0, 1, 2, ... whose state is the next value; fails at `fail_at`."""

  def __init__(self, fail_at=None, delay=0.0):
    self.next_value, self.fail_at, self.delay = 0, fail_at, delay

  def __next__(self):
    time.sleep(self.delay)
    if self.next_value == self.fail_at:
      raise RuntimeError(f'damaged record {self.next_value}')
    self.next_value += 1
    return self.next_value - 1

  def get_state(self):
    return {'next': self.next_value}


def test_the_prefetched_state_is_the_state_after_the_batches_returned():
  batches = Prefetched(Counting(), place=lambda b: b * 10, depth=2)
  try:
    assert [next(batches) for _ in range(3)] == [0, 10, 20]
    time.sleep(0.1)  # the thread has made more batches than were returned
    assert batches.get_state() == {'next': 3}
  finally:
    batches.close()


def test_the_prefetcher_times_the_wait_and_raises_the_loaders_error():
  batches = Prefetched(Counting(fail_at=2, delay=0.2))
  try:
    next(batches)
    assert batches.last_wait_s > 0.1
    next(batches)
    with pytest.raises(RuntimeError, match='damaged record 2'):
      next(batches)
  finally:
    batches.close()


class Waiting(Counting):
  """An iterator whose first batch never comes until it is closed (loader workers that are
  still starting), as grain's, whose `close` ends a pending `next` with an error."""

  def __init__(self):
    super().__init__()
    self.closed = threading.Event()

  def __next__(self):
    self.closed.wait()
    raise ValueError('the iterator was closed')

  def close(self):
    self.closed.set()


def test_closing_while_the_first_batch_is_awaited_closes_the_loader_quietly(capfd):
  """A stop that lands while the loader's workers still start: `close` gives the thread
  `timeout_s`, then closes the loader anyway (left open, grain's exit finalizer races
  multiprocessing's and prints a traceback), and the thread ends without a word."""
  loader = Waiting()
  batches = Prefetched(loader)
  start = time.monotonic()
  batches.close(timeout_s=0.5)
  assert loader.closed.is_set() and 0.5 <= time.monotonic() - start < 5
  assert not batches._thread.is_alive()
  assert capfd.readouterr().err == ''


# --- The layout comparison ------------------------------------------------------------------

def _outputs(bias_update, kernel_update):
  gradient = {'conv': {'bias': np.full(4, 1e-12), 'kernel': np.ones((3, 4))}}
  return {'eval_logits': np.ones((2, 5)), 'loss': np.float32(1.0),
          'batch_stats_after_step': {'bn': {'mean': np.ones(4)}}, 'gradient': gradient,
          'update': {'conv': {'bias': bias_update, 'kernel': kernel_update}}}


def test_the_layout_check_names_a_differing_array_and_discounts_zero_gradient_noise():
  default = _outputs(np.full(4, 1e-14), np.ones((3, 4)))
  noise = _outputs(np.full(4, -2e-14), np.ones((3, 4)))  # 3.0 relative, on a zero gradient
  result = conv_layout_check.compare(default, noise, 1e-4)
  assert result['holds'] and result['zero_gradient_arrays'] == ["['conv']['bias']"]
  assert [(r['output'], r['array']) for r in result['noise']] == [('update', "['conv']['bias']")]

  wrong = _outputs(np.full(4, 1e-14), np.ones((3, 4)) * 1.01)
  result = conv_layout_check.compare(default, wrong, 1e-4)
  assert not result['holds']
  assert [(r['output'], r['array']) for r in result['differing']] == [
      ('update', "['conv']['kernel']")]
  assert 'DIFFERS: update [\'conv\'][\'kernel\']' in '\n'.join(
      conv_layout_check.report_lines({'model': 'm', 'width': 1, 'frames': 1, 'crop': 1,
                                      'batch': 1, 'device': 'd', **result}))
