"""The paper's Table 3, cell by cell: 29 numbers, each with a config that trains its row on its
dataset and quotes the number, and `make table3` showing them beside the runs' numbers."""
import importlib
import json
import pathlib
import re
import subprocess

from cstm_jax.analysis import table3
from cstm_jax.config import defaults, zoo

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cells():
  return [(row, dataset, paper, config) for row in table3.TABLE3
          for dataset, (paper, config) in row.cells.items()]


def test_every_one_of_the_29_numbers_has_a_config_of_its_row_that_quotes_it():
  assert len(cells()) == 29
  configs = [config for *_, config in cells()]
  assert len(set(configs)) == 29  # one config per cell
  for row, dataset, paper, name in cells():
    module = importlib.import_module(f'configs.{name}')
    quoted = re.search(r'^Paper \((.*?)\): ([\d.]+)', module.__doc__, re.M)
    assert quoted, name
    assert quoted.group(2) == f'{paper:.2f}', name
    assert '1 clip, centre crop' in quoted.group(1), name  # the table's protocol
    config = module.get_config()
    assert config.data.name == defaults.DATASETS[dataset][0], name
    assert zoo.name_of(config.model) == row.model, name
    assert config.model.num_frames == row.frames, name
    assert f'python main.py --config=configs/{name}.py --workdir=runs/{name}' in module.__doc__
    assert 'recipe' in module.__doc__.lower(), name  # says its recipe
    assert re.search(r'Starts from|from scratch', module.__doc__), name  # and its weights


def test_the_table_shows_the_paper_and_the_runs_numbers(tmp_path):
  runs = tmp_path / 'runs'
  (runs / 'ssv2_8f').mkdir(parents=True)
  (runs / 'ssv2_8f' / 'final_metrics.json').write_text(json.dumps(
      {'1x1': {'top1': 62.125, 'top5': 88.0}, '2x3': {'top1': 64.0}}))
  (runs / 'ssv1_8f').mkdir()
  (runs / 'ssv1_8f' / 'final_metrics.json').write_text('{"1x1": ')  # a run still writing
  result = subprocess.run(['make', '-s', 'table3', f'PYTHON={ROOT}/.venv/bin/python'], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  assert '| CSTM | BN-Inception | 8 | 47.96 / ' in result.stdout  # runs/ may hold real runs
  assert '29 cells, one command each:' in result.stdout
  text = table3.render(runs)
  assert '| CSTM | BN-Inception | 8 | 47.96 / - | 63.45 / 62.12 | 96.40 / - |' in text
  assert '| TSM | ResNet-50 | 16 | 44.80 / - | 58.70 / - |  |' in text
  assert '29 cells, one command each:' in text
  assert text.count('python main.py --config=configs/') == 29
