"""3D baseline i3d on Something-Something v2, 32 frames.

  python main.py --config=configs/ssv2_i3d.py --workdir=runs/ssv2_i3d

Paper (views 1x1: 1 clip, centre crop; validation): not reported on SSv2 in the paper.
Trains on GSM's recipe (docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): googlenet-1378be20.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D), as the 3D nets of the table start from
ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv2_i3d.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'i3d', 32, arg)
