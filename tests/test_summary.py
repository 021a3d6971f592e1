"""The model summary CLI and the multiply-add counter behind it."""
import json

import jax
import jax.numpy as jnp
import pytest

from cstm_jax.analysis import summary
from cstm_jax.analysis.flops import count_macs


def test_dense_count_includes_padded_taps_and_xla_count_skips_them():
  conv = lambda x, w: jax.lax.conv_general_dilated(
      x, w, (1, 1), [(1, 1), (1, 1)], dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  x = jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32)
  w = jax.ShapeDtypeStruct((3, 3, 4, 16), jnp.float32)
  assert count_macs(conv, x, w) == 8 * 8 * 9 * 4 * 16
  assert count_macs(conv, x, w, dense=False) == 22 * 22 * 4 * 16  # 22 valid taps per axis


def test_summary_json_lists_the_requested_models(capsys):
  assert summary.main(['--json', '--frames', '4', '--models', 'tsm_bninception,s3d']) == 0
  rows = json.loads(capsys.readouterr().out)
  assert [r['model'] for r in rows] == ['tsm_bninception', 's3d']
  for row in rows:
    assert {'model', 'backbone', 'temporal', 'frames', 'crop', 'params', 'gmacs'} <= set(row)
    assert row['frames'] == 4 and row['params'] > 1e6 and row['gmacs'] > 1
  assert rows[0]['crop'] == 224 and rows[0]['temporal'] == 'tsm'


def test_summary_table_and_unknown_model(capsys):
  summary.main(['--models', 'r2plus1d_18'])
  out = capsys.readouterr().out
  assert out.startswith('| model |') and '| r2plus1d_18 | r2plus1d_18 | none | 8 | 112 |' in out
  with pytest.raises(SystemExit):
    summary.main(['--models', 'c3d'])
  assert "unknown models ['c3d']" in capsys.readouterr().err
