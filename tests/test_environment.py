"""The environment `make` builds: a Python >= 3.12 found, or one line saying what to install."""
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIND = ROOT / 'scripts' / 'find_python.sh'


def find_python(*args, **env):
  return subprocess.run(['/bin/bash', str(FIND), *args], capture_output=True, text=True, timeout=60,
                        env={**os.environ, **env})


def test_the_running_python_is_new_enough_and_is_found_when_named():
  assert sys.version_info[:2] >= (3, 12)
  found = find_python(sys.executable)
  assert found.returncode == 0 and found.stdout.strip() == sys.executable, found


def test_an_old_python_named_or_none_found_is_one_line_and_exit_1(tmp_path):
  old = tmp_path / 'python3'
  old.write_text('#!/bin/sh\nexit 1\n')  # a Python that is not >= 3.12 (or a broken shim)
  old.chmod(0o755)
  named = find_python(str(old))
  assert named.returncode == 1 and named.stdout == ''
  assert named.stderr.strip().count('\n') == 0 and 'is not a Python >= 3.12' in named.stderr

  # Nothing else on PATH, no pyenv: the old python3 is all there is.
  none = find_python(PATH=str(tmp_path), PYENV_ROOT=str(tmp_path / 'no_pyenv'))
  assert none.returncode == 1 and none.stdout == '' and none.stderr.strip().count('\n') == 0
  assert 'No Python >= 3.12 found' in none.stderr and 'make PY=' in none.stderr
