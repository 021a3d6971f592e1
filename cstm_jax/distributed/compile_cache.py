"""JAX's persistent compilation cache, on by default for every command that compiles, so a
restarted (preempted, requeued, resumed) run loads its programs instead of compiling them again.

Where the cache lives, first match wins:
  1. `--config.xla.cache_dir=DIR` (local or gs://), or `off`;
  2. the environment variable `CSTM_COMPILE_CACHE` (a folder, or `off`);
  3. JAX's own `JAX_COMPILATION_CACHE_DIR`;
  4. `~/.cache/cstm_jax/xla` (`DEFAULT`).

The key of a cached program holds the jax version, the XLA flags and the device kind, so one
folder serves several machines and versions. On GPUs the folder also keeps XLA's per-fusion
autotuning results (cuDNN's choices for CSTM's grouped 3D convs), which need a local or shared
file system: with a gs:// folder only the compiled programs are kept. Only process 0 of a
multi-process job writes entries (JAX's rule); the other processes read what it wrote, which
they find when the folder is shared (a cluster's home or scratch file system, or gs:// for the
hosts of a TPU slice). `CompileCounter` tells whether a call's programs came from the cache.
"""
import contextlib
import os
from typing import Optional

from absl import logging

ENVIRONMENT = 'CSTM_COMPILE_CACHE'
DEFAULT = '~/.cache/cstm_jax/xla'
OFF = 'off'


def chosen_dir(setting: str = '', environ=os.environ) -> Optional[str]:
  """The cache folder that `setting` (a config's `xla.cache_dir`) and the environment choose,
  with `~` and variables expanded; None when the cache is off."""
  from cstm_foundation.paths import expand
  for value in (setting, environ.get(ENVIRONMENT, ''), environ.get('JAX_COMPILATION_CACHE_DIR', ''),
                DEFAULT):
    value = (value or '').strip()
    if value:
      return None if value.lower() == OFF else expand(value)
  return None


def config_setting(config) -> str:
  """`config.xla.cache_dir`, '' for configs written before the key existed (a run's old
  config.json)."""
  xla = config.get('xla') if config is not None else None
  return (xla.get('cache_dir', '') if xla is not None else '') or ''


def enable(setting: str = '') -> Optional[str]:
  """Points JAX's persistent compilation cache at the folder `chosen_dir(setting)` picks (or
  turns it off), before the first compile. Returns the folder, or None when off."""
  import jax
  from cstm_foundation.paths import is_remote
  folder = chosen_dir(setting)
  if folder is None:
    jax.config.update('jax_enable_compilation_cache', False)
    logging.info('Compilation cache: off')
  else:
    if not is_remote(folder):
      os.makedirs(folder, exist_ok=True)
    jax.config.update('jax_enable_compilation_cache', True)
    jax.config.update('jax_compilation_cache_dir', folder)
    # XLA's own caches (the GPU autotuning results) are plain files: local or shared disks only.
    jax.config.update('jax_persistent_cache_enable_xla_caches',
                      'none' if is_remote(folder) else 'xla_gpu_per_fusion_autotune_cache_dir')
    logging.info('Compilation cache: %s', folder)
  _reset_if_used()
  return folder


@contextlib.contextmanager
def using(setting: str = ''):
  """`enable(setting)` inside the block; JAX's cache settings as they were after it (for a
  command run inside another program, e.g. the tests)."""
  import jax
  names = ('jax_enable_compilation_cache', 'jax_compilation_cache_dir',
           'jax_persistent_cache_enable_xla_caches')
  before = {name: getattr(jax.config, name) for name in names}
  try:
    yield enable(setting)
  finally:
    for name, value in before.items():
      jax.config.update(name, value)
    _reset_if_used()


def _reset_if_used() -> None:
  """JAX decides once per process whether it uses the cache (at the first compile); a program
  compiled before `enable` (none is, in the commands) would have fixed that decision. JAX's public
  `reset_cache` returns it to undecided (a no-op when nothing was compiled yet)."""
  from jax.experimental.compilation_cache import compilation_cache
  compilation_cache.reset_cache()


_counts = {'requests': 0, 'hits': 0}
_EVENTS = {'/jax/compilation_cache/compile_requests_use_cache': 'requests',
           '/jax/compilation_cache/cache_hits': 'hits'}
_listening = False


def _listen(event: str, **kwargs) -> None:
  if event in _EVENTS:
    _counts[_EVENTS[event]] += 1


class CompileCounter:
  """Counts the programs compiled while it is open, and how many came from the cache:

    with CompileCounter() as counted:
      train_step(...)
    counted.describe()  # 'from the compilation cache' / 'compiled, not in the cache' / ...
  """

  def __enter__(self):
    global _listening
    if not _listening:
      import jax
      jax.monitoring.register_event_listener(_listen)
      _listening = True
    self._start = dict(_counts)
    self.requests = self.hits = 0
    return self

  def __exit__(self, *exc):
    self.requests = _counts['requests'] - self._start['requests']
    self.hits = _counts['hits'] - self._start['hits']
    return False

  def describe(self) -> str:
    if self.requests == 0:
      import jax
      return ('compilation cache off' if not (jax.config.jax_enable_compilation_cache and
                                              jax.config.jax_compilation_cache_dir)
              else 'compiled before in this process')
    if self.hits == self.requests:
      return 'from the compilation cache'
    if self.hits == 0:
      return 'compiled, not in the compilation cache'
    return f'{self.hits} of {self.requests} programs from the compilation cache'
