"""3D baseline i3d_resnet50 on Something-Something v2, 32 frames.

  python main.py --config=configs/ssv2_i3d_resnet50.py --workdir=runs/ssv2_i3d_resnet50

Paper (views 1x1: 1 clip, centre crop; validation): not reported on SSv2 in the paper.
Trains on GSM's recipe (docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): resnet50-19c8e357.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D), as the 3D nets of the table start from
ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv2_i3d_resnet50.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'i3d_resnet50', 32, arg)
