"""Imports flow one way: cstm_foundation stands alone and light; input_pipeline builds on it
alone; the model code does not reach up into training, inference, the data package or the
configs; nothing of the package imports a config file; config files load no JAX and no data
stack."""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def imported_packages(path: pathlib.Path) -> set[str]:
  """Dotted names of every module `path` imports, at the top or inside functions."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names |= {node.module} | {f'{node.module}.{alias.name}' for alias in node.names}
  return names


def wrong_way(folder: str, forbidden: tuple[str, ...],
              allowed: tuple[str, ...] = ()) -> dict[str, list[str]]:
  """Modules under `folder` that import a module of `forbidden` (one of `allowed` excepted)."""
  within = lambda n, roots: any(n == f or n.startswith(f + '.') for f in roots)
  found = {}
  for path in sorted((ROOT / folder).rglob('*.py')):
    bad = sorted(n for n in imported_packages(path)
                 if (n.split('.')[0] in forbidden or within(n, forbidden))
                 and not within(n, allowed))
    if bad:
      found[str(path.relative_to(ROOT))] = bad
  return found


HEAVY = ('jax', 'flax', 'optax', 'orbax', 'grain', 'tensorflow_datasets', 'cv2', 'av', 'numpy')


def test_the_foundation_imports_nothing_of_the_project_and_nothing_heavy():
  assert wrong_way('cstm_foundation', ('cstm_jax', 'input_pipeline', 'configs') + HEAVY) == {}


def test_input_pipeline_imports_nothing_of_the_package_above():
  assert wrong_way('input_pipeline', ('cstm_jax', 'configs')) == {}


def test_models_and_temporal_ops_do_not_import_training_or_configs():
  above = tuple(f'cstm_jax.{m}'
                for m in ('train', 'evaluation', 'train_state', 'steps', 'checkpoints', 'predict',
                          'export', 'convert', 'benchmark', 'aot', 'demo', 'writer', 'plots',
                          'launch', 'peers')) + ('configs', 'input_pipeline')
  for folder in ('cstm_jax/models', 'cstm_jax/temporal'):
    assert wrong_way(folder, above) == {}, folder


def test_nothing_of_the_package_imports_a_config_file():
  # The configs sit on top: the package reads them by name or path (config_loader.load), never by
  # import, so they need not be an installed top-level package.
  assert wrong_way('cstm_jax', ('configs',)) == {}
  assert wrong_way('input_pipeline', ('configs',)) == {}


def test_config_files_load_no_jax_and_no_data_stack():
  heavy = ('jax', 'flax', 'optax', 'orbax', 'grain', 'tensorflow_datasets', 'cv2', 'av')
  code = ('import glob, importlib, pathlib, sys\n'
          'for path in sorted(glob.glob("configs/[!_]*.py")):\n'
          '  importlib.import_module("configs." + pathlib.Path(path).stem).get_config()\n'
          f'print(sorted(m for m in {heavy!r} if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  assert out.stdout.strip() == '[]'


def test_the_check_sees_a_wrong_way_import(tmp_path, monkeypatch):
  module = tmp_path / 'input_pipeline' / 'bad.py'
  module.parent.mkdir()
  module.write_text('def f():\n  from cstm_jax.train import train_and_evaluate\n')
  monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
  assert wrong_way('input_pipeline', ('cstm_jax',)) == {
      'input_pipeline/bad.py': ['cstm_jax.train', 'cstm_jax.train.train_and_evaluate']}


def test_the_metric_writer_starts_without_importing_torch(tmp_path):
  # tensorboardX imports torch where it is installed (as here, for the PyTorch cross-checks), a
  # cost of seconds at every start of a run; the writer keeps it out.
  assert importlib.util.find_spec('torch')  # else the check below could not fail
  code = ('import sys\nfrom cstm_jax.writer import MetricWriter\n'
          f'writer = MetricWriter({str(tmp_path)!r})\nwriter.write(1, {{"loss": 0.5}})\n'
          'writer.close()\nimport tensorboardX.x2num\nprint("torch" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.stdout.strip() == 'False'
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
