"""3D baseline i3d_resnet50 on Something-Something v2, 32 frames.

  python main.py --config=configs/ssv2_i3d_resnet50.py --workdir=runs/ssv2_i3d_resnet50

Paper (views 1x1: 1 clip, centre crop; validation): not reported on SSv2 in the paper.
Trains on GSM's recipe from scratch (docs/design.md, "Recipe").
`--config=configs/ssv2_i3d_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'i3d_resnet50', 32, arg)
