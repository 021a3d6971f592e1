"""main.py as users run it: a locked config, the smoke variant of an experiment."""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_demo_config_takes_smoke_alone():
  from cstm_jax.config import loader
  smoke = loader.load(str(ROOT / 'configs/demo.py:smoke'))
  assert smoke.to_dict() == loader.load(str(ROOT / 'configs/demo.py:cstm:smoke')).to_dict()
  assert smoke.model.temporal == 'cstm' and smoke.train.max_steps == 6


def run_main(*args, env=None):
  return subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=env)


def test_missing_dataset_fails_at_start_with_the_fix(tmp_path):
  args = ('--config=configs/ssv2_16f.py:smoke', f'--workdir={tmp_path / "run"}',
          f'--config.data.data_dir={tmp_path / "nowhere"}')
  result = run_main(*args)
  assert result.returncode == 1
  (line,) = [l for l in result.stderr.splitlines() if l.startswith('error: ')]
  assert "prepared dataset 'something_something_v2' not found" in line
  assert 'python -m input_pipeline.prepare' in line
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run' / 'checkpoints').exists()
  # The traceback, for a bug report, on request.
  debug = run_main(*args, env={**os.environ, 'CSTM_DEBUG': '1'})
  assert debug.returncode == 1 and 'Traceback' in debug.stderr


def test_misspelt_config_key_is_an_error(tmp_path):
  result = run_main('--config=configs/ssv2_16f.py', '--config.model.widht=0.5',
                    f'--workdir={tmp_path}')
  assert result.returncode != 0
  assert 'error: unknown config key model.widht; did you mean model.width?' in result.stderr
  assert 'Traceback' not in result.stderr


def test_a_run_with_loader_processes_ends_quietly(prepared_ssv2, tmp_path):
  # Loader processes (grain) leave batches in shared memory when training stops; the resource
  # tracker frees them at exit, and its warning about them, like orbax's start-up chatter, is
  # not printed (CSTM_DEBUG=1 keeps both).
  result = run_main('--config=configs/ssv2_r2plus1d_18.py:smoke', f'--workdir={tmp_path}',
                    f'--config.data.data_dir={prepared_ssv2[0]}', '--config.data.num_workers=2',
                    '--config.train.eval_every_epochs=1000')
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / 'final_metrics.json').exists()
  for noise in ('leaked shared_memory', 'Type handler registry', 'Traceback',
                'Exception ignored'):
    assert noise not in result.stderr, noise


def test_trn_trains_evaluates_and_predicts_as_users_run_it(prepared_ssv2, synthetic_ssv2,
                                                           tmp_path):
  """TRN's head (no `head` parameters; relations drawn in the train step) through main.py, its
  checkpoints and evaluation, then predict from the run's config.json."""
  result = run_main('--config=ssv2_trn:smoke', f'--workdir={tmp_path}',
                    f'--config.data.data_dir={prepared_ssv2[0]}')
  assert result.returncode == 0, result.stderr[-3000:]
  final = json.loads((tmp_path / 'final_metrics.json').read_text())
  assert 0 <= final['1x1']['top1'] <= 100
  video = next(synthetic_ssv2[0].rglob('*.webm'))
  predicted = subprocess.run([sys.executable, '-m', 'cstm_jax.inference.predict',
                              '--workdir', str(tmp_path), '--video', str(video), '--json'],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert predicted.returncode == 0, predicted.stderr[-3000:]
  assert len(json.loads(predicted.stdout)['top']) == 5
