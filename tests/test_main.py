"""main.py as users run it: a locked config, the smoke variant of an experiment."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_smoke_config_builds_the_model(tmp_path):
  result = run_main('--config=configs/ssv2_16f.py:smoke', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert 'cstm_bninception:' in result.stdout and '4-frame clip' in result.stdout


def test_misspelt_config_key_is_an_error(tmp_path):
  result = run_main('--config=configs/ssv2_16f.py', '--config.model.widht=0.5',
                    f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'Did you mean "width"' in result.stderr
