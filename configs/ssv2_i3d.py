"""3D baseline i3d on Something-Something v2, 32 frames.

  python main.py --config=configs/ssv2_i3d.py --workdir=runs/ssv2_i3d

Paper (views 1x1: 1 clip, centre crop; validation): not reported on SSv2 in the paper.
Trains on GSM's recipe from scratch (docs/design.md, "Recipe").
`--config=configs/ssv2_i3d.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'i3d', 32, arg)
