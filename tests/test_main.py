"""main.py as users run it: a locked config, the smoke variant of an experiment."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def run_main(*args):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def test_missing_dataset_fails_at_start_with_the_fix(tmp_path):
  result = run_main('--config=configs/ssv2_16f.py:smoke', f'--workdir={tmp_path / "run"}',
                    f'--config.data.data_dir={tmp_path / "nowhere"}')
  assert result.returncode != 0
  assert "prepared dataset 'something_something_v2' not found" in result.stderr
  assert 'python -m input_pipeline.prepare' in result.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_misspelt_config_key_is_an_error(tmp_path):
  result = run_main('--config=configs/ssv2_16f.py', '--config.model.widht=0.5',
                    f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'Did you mean "width"' in result.stderr
