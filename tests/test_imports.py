"""Imports flow one way, folder by folder (RULES): cstm_foundation stands alone and light;
input_pipeline builds on it alone; the configuration reads no model; the models read the
configuration's facts and nothing that trains; the multi-process infrastructure reads nothing of
the model; training sits on both, inference on training, analysis on all of them, and the
commands (`cstm_jax/main.py`, `cstm_jax/demo.py`) and the development tools (`tools/`) on top.
Nothing of the package imports a config file or a development tool; config files load no JAX
and no data stack."""
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
PROJECT = ('cstm_foundation', 'input_pipeline', 'cstm_jax', 'configs', 'tools')

# Each folder and the project modules it may import besides its own (a name stands for the
# package or module and everything below it).
_TRAIN = ('cstm_foundation', 'input_pipeline', 'cstm_jax.config', 'cstm_jax.models',
          'cstm_jax.distributed')
RULES = {
    'cstm_foundation': (),
    'input_pipeline': ('cstm_foundation',),
    'cstm_jax/config': ('cstm_foundation', 'input_pipeline'),
    'cstm_jax/models': ('cstm_foundation', 'input_pipeline.conventions', 'cstm_jax.config'),
    'cstm_jax/distributed': ('cstm_foundation',),
    'cstm_jax/train': _TRAIN,
    'cstm_jax/inference': _TRAIN + ('cstm_jax.train',),
    'cstm_jax/analysis': _TRAIN + ('cstm_jax.train', 'cstm_jax.inference'),
}


def test_the_foundation_imports_nothing_heavy():
  assert wrong_way('cstm_foundation', HEAVY) == {}


# The foundation's modules in the one order their imports may run: each imports only modules
# before it (a circle, as errors -> stopping -> logs -> errors was, cannot be drawn).
FOUNDATION_ORDER = ('errors', 'paths', 'progress', 'cli_flags', 'logs', 'stopping', 'commands')


def foundation_imports_against_the_order(root: pathlib.Path) -> dict[str, list[str]]:
  """Modules of `root`/cstm_foundation that import one of the foundation at or after their own
  place in FOUNDATION_ORDER (or that the order does not name)."""
  found = {}
  for path in sorted((root / 'cstm_foundation').glob('*.py')):
    if path.stem == '__init__':
      continue
    if path.stem not in FOUNDATION_ORDER:
      found[path.stem] = ['(not in FOUNDATION_ORDER)']
      continue
    below = FOUNDATION_ORDER[:FOUNDATION_ORDER.index(path.stem)]
    used = {n.split('.')[1] for n in imported_packages(path) if n.startswith('cstm_foundation.')}
    bad = sorted(n for n in used if n not in below)
    if bad:
      found[path.stem] = bad
  return found


def test_the_foundation_imports_one_way():
  assert foundation_imports_against_the_order(ROOT) == {}


def test_the_foundation_check_sees_a_circle(tmp_path):
  folder = tmp_path / 'cstm_foundation'
  folder.mkdir()
  (folder / 'errors.py').write_text('def f():\n  from cstm_foundation import stopping\n')
  (folder / 'stopping.py').write_text('from cstm_foundation.errors import UserError\n')
  assert foundation_imports_against_the_order(tmp_path) == {'errors': ['stopping']}


def test_every_folder_imports_only_what_its_rule_allows():
  for folder, allowed in RULES.items():
    own = folder.replace('/', '.')
    assert wrong_way(folder, PROJECT, allowed + (own,)) == {}, folder


def test_every_folder_of_the_package_has_a_rule():
  folders = {str(p.parent.relative_to(ROOT)) for p in (ROOT / 'cstm_jax').glob('*/__init__.py')}
  assert folders == {f for f in RULES if f.startswith('cstm_jax/')}


def test_the_commands_import_nothing_of_the_tools_or_the_configs():
  for command in ('cstm_jax/main.py', 'cstm_jax/demo.py', 'cstm_jax/__init__.py'):
    bad = [n for n in imported_packages(ROOT / command)
           if n.split('.')[0] in ('tools', 'configs')]
    assert bad == [], command


def test_nothing_of_the_package_imports_a_config_file():
  # The configs sit on top: the package reads them by name or path (config.loader.load), never
  # by import, so they need not be an installed top-level package.
  assert wrong_way('cstm_jax', ('configs', 'tools')) == {}
  assert wrong_way('input_pipeline', ('configs', 'tools')) == {}


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
  module.write_text('def f():\n  from cstm_jax.train.loop import train_and_evaluate\n')
  monkeypatch.setattr(sys.modules[__name__], 'ROOT', tmp_path)
  assert wrong_way('input_pipeline', ('cstm_jax',)) == {
      'input_pipeline/bad.py': ['cstm_jax.train.loop', 'cstm_jax.train.loop.train_and_evaluate']}


def test_the_metric_writer_starts_without_importing_torch(tmp_path):
  # tensorboardX imports torch where it is installed (as here, for the PyTorch cross-checks), a
  # cost of seconds at every start of a run; the writer keeps it out.
  assert importlib.util.find_spec('torch')  # else the check below could not fail
  code = ('import sys\nfrom cstm_jax.train.writer import MetricWriter\n'
          f'writer = MetricWriter({str(tmp_path)!r})\nwriter.write(1, {{"loss": 0.5}})\n'
          'writer.close()\nimport tensorboardX.x2num\nprint("torch" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.stdout.strip() == 'False'
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_training_starts_without_the_weight_readers():
  # A GPU image may lack safetensors and torch; only reading such weights needs them.
  code = ('import sys\nimport cstm_jax.train.experiment\n'
          'print(sorted(m for m in ("safetensors", "torch") if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=ROOT, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.stdout.strip() == '[]'
