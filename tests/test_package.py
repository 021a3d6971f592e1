"""The package as users install it: a wheel in a fresh environment, used outside the checkout."""
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCES = ('pyproject.toml', 'README.md', 'requirements.txt', 'requirements-tpu.txt',
           'requirements-cuda.txt', 'requirements-cuda13.txt', 'requirements-dev.txt',
           'cstm_foundation', 'cstm_jax',
           'input_pipeline', 'configs')


def test_the_wheel_installs_with_its_commands_and_runs_outside_the_checkout(tmp_path):
  # Build from a copy: the build leaves build/ and *.egg-info where it runs.
  src = tmp_path / 'src'
  src.mkdir()
  for name in SOURCES:
    if (ROOT / name).is_dir():
      shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(ROOT / name, src / name)
  pip = [sys.executable, '-m', 'pip']
  subprocess.run(pip + ['wheel', str(src), '--no-deps', '--no-build-isolation', '-q', '-w',
                        str(tmp_path / 'dist')], check=True)
  wheel, = (tmp_path / 'dist').glob('cstm_jax-*.whl')

  # A fresh environment. Its dependencies come from this one's site-packages (a .pth file):
  # installing them from the pins is what `make test` already does.
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  site = pathlib.Path(subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      capture_output=True, text=True, check=True).stdout.strip())
  (site / 'dependencies.pth').write_text(sysconfig.get_paths()['purelib'] + '\n')
  subprocess.run(pip + ['--python', str(python), 'install', '--no-deps', '-q', str(wheel)],
                 check=True)

  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH',)}
  run = lambda *args: subprocess.run([str(a) for a in args], cwd=elsewhere, env=env,
                                     capture_output=True, text=True, timeout=300)
  # The configs inside the package's namespace: no top-level `configs` to collide with a user's
  # own; every package of the checkout is in the wheel.
  where = run(
      python, '-c', 'import cstm_jax, input_pipeline, cstm_jax.configs as c; '
      'print(cstm_jax.__file__, input_pipeline.__file__, c.__file__)')
  assert where.returncode == 0 and where.stdout.count(str(site)) == 3, where
  assert run(python, '-c', 'import configs').returncode == 1
  packages = {
      str(p.parent.relative_to(ROOT)).replace('/', '.')
      for folder in ('cstm_foundation', 'cstm_jax', 'input_pipeline')
      for p in (ROOT / folder).rglob('__init__.py')
  }
  found = run(
      python, '-c', 'import importlib, sys; [importlib.import_module(p) for p in '
      f'{sorted(packages)!r}]')
  assert found.returncode == 0, found.stderr[-2000:]

  # The data commands with relative paths: the demo's data step, at a tiny size.
  made = run(venv / 'bin' / 'cstm-synthetic', '--out=raw', '--train=4', '--val=2', '--test=0',
             '--size=32', '--workers=1')
  assert made.returncode == 0, made.stderr[-2000:]
  prepared = run(venv / 'bin' / 'cstm-prepare', '--dataset=ssv2', '--manual_dir=raw',
                 '--data_dir=data', '--workers=1', '--short_side=0')
  assert prepared.returncode == 0, prepared.stderr[-2000:]
  assert (elsewhere / 'data/something_something_v2/1.0.0').is_dir()
  assert '--prepare_only' in run(venv / 'bin' / 'cstm-demo', '--help').stdout
  # The training command: every flag in --help, and the packaged configs behind --config.
  help_text = run(venv / 'bin' / 'cstm-train', '--help').stdout
  assert '--config' in help_text and '--workdir' in help_text
  misspelt = run(venv / 'bin' / 'cstm-train', '--config=demo:smoke', '--workdir=run',
                 '--config.optim.lerning_rate=1')
  assert misspelt.returncode == 1
  assert 'unknown config key optim.lerning_rate; did you mean optim.base_lr?' in misspelt.stderr
