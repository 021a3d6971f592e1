"""One place builds the training program from a finished config: every command's steps are
`program.build`'s, and the benchmark times the experiment's own optimizer."""
import ast
import pathlib
import re

import jax
import pytest

from configs import ssv2_r2plus1d_18, ssv2_tsm_resnet50
from cstm_jax.analysis import benchmark
from cstm_jax.config import finish
from cstm_jax.distributed import sharding
from cstm_jax.train import program

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEP_MAKERS = ('make_train_step', 'make_eval_step', 'jit_train_step', 'jit_eval_step',
               'jit_forward')


def calls(path: pathlib.Path) -> set[str]:
  """The names of the functions `path` calls (`f(...)` and `module.f(...)`)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Call):
      function = node.func
      found.add(function.attr if isinstance(function, ast.Attribute) else
                getattr(function, 'id', ''))
  return found


def test_only_the_program_builder_makes_the_steps():
  callers = {str(path.relative_to(ROOT)) for folder in ('cstm_jax', 'tools')
             for path in (ROOT / folder).rglob('*.py') if calls(path) & set(STEP_MAKERS)}
  assert callers == {'cstm_jax/train/program.py', 'cstm_jax/train/steps.py'}
  assert calls(ROOT / 'cstm_jax/train/program.py') >= {'make_train_step', 'jit_train_step'}


def test_the_builder_takes_only_a_finished_config():
  config = ssv2_r2plus1d_18.get_config('smoke')
  config.model.num_classes = 12
  with pytest.raises(TypeError, match='finished config'):
    program.build(config, sharding.make_mesh(1))
  finished = finish.without_data(config)
  assert finish.is_finished(finished) and not finish.is_finished(config)
  built = program.build(finished, sharding.make_mesh(1))
  assert built.config is finished and built.input_norm == 'rgb_imagenet'
  assert built.clips_shape == (8, 4, 32, 32, 3)


def test_finishing_refuses_a_class_count_that_differs_and_resolves_the_loader():
  config = ssv2_r2plus1d_18.get_config('smoke')
  config.data.num_workers = -1
  finished = finish.finish(config, num_classes=12, classes_from='the dataset', accelerators=0)
  assert finished.model.num_classes == 12 and finished.data.num_workers >= 0
  assert (config.model.num_classes, config.data.num_workers) == (0, -1)  # the original stays
  config.model.num_classes = 174
  with pytest.raises(ValueError, match='model.num_classes is 174 but the dataset has 12'):
    finish.finish(config, num_classes=12, classes_from='the dataset')


def test_the_benchmark_times_the_experiments_optimizer():
  setting = benchmark.Setting('tsm_resnet50', 4, 32, 8, 'float32', 'train', width=0.125)
  experiment = ssv2_tsm_resnet50.get_config()
  config = benchmark.setting_config(setting, experiment)
  assert config.optim.to_dict() == experiment.optim.to_dict()
  assert config.optim.param_groups == 'tsm' and config.optim.schedule == 'steps'
  assert benchmark.setting_config(setting).optim.param_groups == 'uniform'  # the base recipe
  # Their optimizers differ (TSM's parameter groups): the two train steps are two programs.
  mesh = sharding.make_mesh(1, jax.devices()[:1])
  state = lambda c: jax.eval_shape(program.build(c, mesh).init_state, jax.random.key(0))
  assert (jax.tree_util.tree_structure(state(config).opt_state) !=
          jax.tree_util.tree_structure(state(benchmark.setting_config(setting)).opt_state))


def test_nothing_below_the_commands_copies_or_changes_a_config():
  # A run's config is finished once (config/finish.py) where its command starts; training,
  # inference and the multi-process code read it as it is.
  changes = (r'deepcopy\(|ConfigDict\(|\.unlocked\(|(?<!jax\.)config\.update\('
             r'|config\[[^\]]*\] =(?!=)')
  found = [f'{path.relative_to(ROOT)}: {change}'
           for folder in ('train', 'distributed', 'inference')
           for path in sorted((ROOT / 'cstm_jax' / folder).rglob('*.py'))
           for change in re.findall(changes, path.read_text())]
  assert found == []
