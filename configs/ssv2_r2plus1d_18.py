"""3D baseline r2plus1d_18 on Something-Something v2, 16 frames.

  python main.py --config=configs/ssv2_r2plus1d_18.py --workdir=runs/ssv2_r2plus1d_18

Paper (views 1x1: 1 clip, centre crop; validation): not reported in the paper.
Trains on GSM's recipe from scratch (docs/design.md, "Recipe").
`--config=configs/ssv2_r2plus1d_18.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'r2plus1d_18', 16, arg)
