"""The command-line tools as users type them: absl flags, `--help` listing every flag, one-line
errors for a bad flag, and `--config` with `--config.KEY=VALUE` overrides wherever a config is
read."""
import json
import pathlib
import subprocess
import sys

import pytest
from absl import flags

from cstm_jax.analysis import aot, benchmark, class_gains, summary
from cstm_jax.config import loader
from cstm_jax.inference import convert, export, predict
from cstm_jax import demo
from tools import bf16_check, conv_layout_check, device_check, grouped_conv_benchmark
from input_pipeline import loader_benchmark as input_benchmark
from input_pipeline import prepare, synthetic

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMANDS = (predict, export, convert, aot, benchmark, class_gains, demo, summary, conv_layout_check,
            device_check,
            bf16_check, input_benchmark, prepare, synthetic)
WITH_CONFIG = (predict, export, convert, aot)


def defined_flags(command) -> list[str]:
  flag_values = flags.FlagValues()
  command.define_flags(flag_values)
  model_flags = ['workdir', 'which', 'checkpoint'] * (command in (predict, export))
  return list(flag_values) + ['config'] * (command in WITH_CONFIG) + model_flags


@pytest.mark.parametrize('command', COMMANDS, ids=lambda c: c.__name__)
def test_help_lists_every_flag(command, capsys):
  with pytest.raises(SystemExit) as exit_:
    command.main(['--help'])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert out.startswith('usage: ') and command.__doc__.strip().splitlines()[0] in out
  for name in defined_flags(command):
    assert f'  --{name}: ' in out or f'  --[no]{name}: ' in out, (name, out)


@pytest.mark.parametrize('module', ['cstm_jax.inference.predict', 'cstm_jax.analysis.benchmark'])
def test_help_in_a_fresh_process_prints_nothing_else(module):
  # Loading the checkpoint code replaces orbax's array handler, which orbax warns about.
  result = subprocess.run([sys.executable, '-m', module, '--help'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and result.stdout.startswith(f'usage: python -m {module}')
  assert result.stderr == ''


def test_a_command_that_logs_prints_no_warning_about_absl_flags():
  # As the demo logs: absl's handler and format outside absl.app.run.
  code = ('from absl import logging\nfrom cstm_foundation import cli_flags, logs\n'
          'cli_flags.parse([], "doc", lambda flag_values: None)\nlogs.quiet_library_logs()\n'
          'logging.warning("working")')
  result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
  assert result.returncode == 0 and result.stderr.strip().endswith('working')
  assert 'before flag parsing' not in result.stderr


def test_a_command_without_flags_still_has_help_and_refuses_arguments(capsys):
  with pytest.raises(SystemExit) as exit_:
    grouped_conv_benchmark.main(['--help'])
  assert exit_.value.code == 0 and 'grouped 3x3x3 convolution' in capsys.readouterr().out
  with pytest.raises(SystemExit) as exit_:
    grouped_conv_benchmark.main(['--shapes=1'])
  assert exit_.value.code == 2
  assert "error: Unknown command line flag 'shapes'" in capsys.readouterr().err


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
  cases = (
      (synthetic, ['--out', str(tmp_path), '--size=17'], '--size 17: give an even number'),
      (synthetic, ['--size=64'], '--out is required'),
      (synthetic, ['--out', str(tmp_path), '--format=mp4'],
       'flag --format=mp4: value should be one of <webm|frames>'),
      (prepare, ['--dataset=ssv2', '--manual_dir=x', '--data_dir=y', '--worker=2'],
       "Unknown command line flag 'worker'. Did you mean: workers ?"),
      (summary, ['--frames=eight'], 'flag --frames=eight: invalid literal for int()'),
      (class_gains, [str(tmp_path)], f'expected RUN_A RUN_B, got {tmp_path}'),
      (demo, ['--models=tsn,c3d'], '--models tsn,c3d: choose from tsn, tsm, gsm'),
      (aot, ['--config=configs/ssv2_8f.py:smoke', '--target=tpu:v5e:2x2', '--steps=backward'],
       '--steps backward: choose from train, eval'),
  )
  for command, argv, problem in cases:
    with pytest.raises(SystemExit) as exit_:
      command.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, (command.__name__, argv, err)
    (line,) = err.strip().splitlines()
    assert line.startswith('error: ') and problem in line, (problem, line)
    assert line.endswith('(--help lists the flags)')
  assert not any(tmp_path.iterdir())  # nothing was written


def test_config_overrides_apply_to_config_files_and_run_configs(tmp_path, monkeypatch):
  run = tmp_path / 'run'
  run.mkdir()
  smoke = loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke'))
  (run / 'config.json').write_text(smoke.to_json())
  monkeypatch.setenv('HOME', str(tmp_path))

  def parse(*argv):
    return loader.parse_command(list(argv), 'doc', lambda flag_values: None,
                                config_required=False)

  # A config file, and a run's config.json written with `~` the shell left alone.
  assert parse('--config=configs/ssv2_8f.py:smoke',
               '--config.model.dtype=bfloat16').config.model.dtype == 'bfloat16'
  from_run = parse('--config=~/run/config.json', '--config.data.test_scale=300').config
  assert from_run.data.test_scale == 300 and from_run.model.backbone == smoke.model.backbone
  assert parse().config is None  # optional: predict and export fall back to the run's own


def test_an_experiment_is_named_without_its_path(tmp_path, monkeypatch):
  # `--config=ssv2_8f:smoke` is the file configs/ssv2_8f.py with its `smoke` argument, from any
  # folder (installed, the files live in cstm_jax/configs; tests/test_package.py runs that).
  monkeypatch.chdir(tmp_path)
  by_name = loader.load('ssv2_8f:smoke')
  assert by_name.to_dict() == loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke')).to_dict()
  assert loader.load('demo').to_dict() == loader.load(str(
      ROOT / 'configs/demo.py')).to_dict()
  assert set(loader.experiments()) == {p.stem for p in (ROOT / 'configs').glob('[!_]*.py')}
  # A file of that name in the current folder is a path, as before.
  (tmp_path / 'ssv2_8f').write_text('')
  with pytest.raises(loader.BadFile, match='ssv2_8f: not a config file'):
    loader.load('ssv2_8f')
  with pytest.raises(loader.MissingFile) as error:
    loader.load('ssv2_16:smoke')
  assert str(error.value).startswith('--config=ssv2_16: no experiment of that name; did you '
                                     'mean ssv2_16f or ')
  assert 'The experiments: demo, folder_8f, ' in str(error.value)


def test_config_override_mistakes_name_the_fix(tmp_path, capsys):
  def error(*argv):
    with pytest.raises(SystemExit):
      loader.parse_command(list(argv), 'doc', lambda flag_values: None,
                           config_required=False)
    return capsys.readouterr().err.strip()

  assert error('--config=configs/ssv2_8f.py', '--config.optim.lerning_rate=0.1') == (
      'error: unknown config key optim.lerning_rate; did you mean optim.base_lr?')
  assert error('--config.model.dtype=bfloat16').startswith(
      "error: --config.model.dtype: give --config (a config file, or a run's config.json) "
      'before overriding its keys')
  assert error(f'--config={tmp_path}/absent.py') == (
      f'error: {tmp_path}/absent.py: no such config file')


def test_a_config_file_that_does_not_load_is_one_line_with_its_file_and_line(tmp_path):
  files = {
      'syntax.py': ('from cstm_jax.config import defaults\n\ndef get_config(arg=None:\n'
                    '  return defaults.get_config()\n'),
      'raises.py': ('from cstm_jax.config import defaults\n\ndef get_config(arg=None):\n'
                    '  config = defaults.get_config()\n  return config.model.widht\n'),
      'empty.py': 'SETTINGS = {}\n',
      'run.json': '{"model": {"width": 1.0,\n  "dtype": }}\n',
  }
  expected = {
      'syntax.py': ':3: ', 'raises.py': ':5: AttributeError: ', 'empty.py': ': a config file '
      'defines get_config(arg)', 'run.json': ':2: not valid JSON'}
  for name, text in files.items():
    (tmp_path / name).write_text(text)
    done = subprocess.run([sys.executable, 'main.py', f'--config={tmp_path / name}',
                           f'--workdir={tmp_path / "run"}'], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: {tmp_path / name}{expected[name]}'), (
        name, done.stderr)


def test_predict_applies_overrides_to_the_run_config(tmp_path, capsys):
  """The override reaches the model: the run's 3 classes refuse a 5-class head, before any
  checkpoint is read."""
  run = tmp_path / 'run'
  run.mkdir()
  config = loader.load(str(ROOT / 'configs/ssv2_8f.py:smoke'))
  config.model.num_classes = 3
  (run / 'config.json').write_text(config.to_json())
  (run / 'classes.json').write_text(json.dumps(['a', 'b', 'c']))
  video = tmp_path / 'clip.webm'
  video.write_bytes(b'')
  from cstm_foundation.commands import run_main
  assert run_main(predict.main, ['--workdir', str(run), '--video', str(video),
                                 f'--config={run}/config.json',
                                 '--config.model.num_classes=5']) == 1
  assert (f'model.num_classes is 5 but the classes of run {run} has 3 classes'
          in capsys.readouterr().err)
