"""scripts/install.sh, the one install step of the TPU VM and GPU node commands, run here as on
an image whose python3 is older than 3.12 and has no uv: against this machine's Pythons."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PYENV = pathlib.Path.home() / '.pyenv' / 'versions'


def install(tmp_path, venv, *, python=None):
  """Runs the step with a fresh user site (no uv installed yet) and a tiny requirements
  file."""
  requirements = tmp_path / 'requirements-tiny.txt'
  requirements.write_text('six==1.16.0\n')
  path = os.pathsep.join(p for p in os.environ['PATH'].split(os.pathsep)
                         if not (pathlib.Path(p) / 'uv').exists())
  env = {**os.environ, 'PYTHONUSERBASE': str(tmp_path / 'user'), 'PATH': path,
         'VENV': str(tmp_path / venv), 'UV_PYTHON_DOWNLOADS': 'never'}
  env.pop('VIRTUAL_ENV', None)
  if python:
    env['PY'] = str(python)
  return subprocess.run(['bash', 'scripts/install.sh', str(requirements)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('version', ['3.12', '3.13'])
def test_the_install_step_makes_an_environment_of_a_python_it_finds(tmp_path, version):
  found = sorted(PYENV.glob(f'{version}.*/bin/python3'))
  assert found, f'this machine has no Python {version} under {PYENV}'
  result = install(tmp_path, 'env', python=found[-1])
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
  assert 'Installing uv' in result.stdout  # from PyPI, for this user: no uv on the image
  assert f'Python: {found[-1]} (found on this machine)' in result.stdout
  venv_python = tmp_path / 'env' / 'bin' / 'python'
  out = subprocess.run([str(venv_python), '-c', 'import sys, six; print(sys.version_info[:2])'],
                       capture_output=True, text=True, check=True).stdout
  assert out.strip() == str(tuple(map(int, version.split('.'))))


def test_the_install_step_names_an_unknown_kind():
  result = subprocess.run(['bash', 'scripts/install.sh', 'tpu-v9'], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode == 2
  assert result.stderr.strip() == 'error: tpu-v9: no such requirements file'
