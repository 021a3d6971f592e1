"""Helpers for tests that train: smoke configs, a run's final parameters, a free port, runs in
subprocesses."""
import os
import pathlib
import signal
import subprocess
import time

from tools.chaos import final_params, free_port  # noqa: F401 (the tests' too)


def smoke(module, data_dir, **overrides):
  config = module.get_config('smoke')
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    section, name = key.split('__')
    config[section][name] = value
  return config


def built(config, steps_per_epoch: int = 1, mesh=None):
  """The training program of `config` (its `model.num_classes` set) on all devices, as a run
  builds it: finished (without opening a dataset), then `program.build`."""
  from cstm_jax.config import finish
  from cstm_jax.train import program
  config = finish.without_data(config)
  return program.build(config, mesh or program.make_mesh(config), steps_per_epoch=steps_per_epoch)


ROOT = pathlib.Path(__file__).resolve().parent.parent


def process_env(devices_per_process: int, **extra) -> dict:
  """The test environment (conftest's XLA flags) with `devices_per_process` CPU devices."""
  flags = os.environ['XLA_FLAGS'].replace('--xla_force_host_platform_device_count=8',
                                          f'--xla_force_host_platform_device_count='
                                          f'{devices_per_process}')
  return {**os.environ, 'XLA_FLAGS': flags, 'PYTHONPATH': str(ROOT), **extra}


def run_until(command, env, done, timeout=300):
  """Runs `command` in its own process group; SIGKILLs the whole group once `done()` is true.
  Returns (exit code, stderr)."""
  process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None and not done():
    time.sleep(0.02)
  if process.poll() is None:
    os.killpg(process.pid, signal.SIGKILL)
  _, err = process.communicate(timeout=120)
  return process.returncode, err
