"""3D baseline s3d on Something-Something v2, 64 frames.

  python main.py --config=configs/ssv2_s3d.py --workdir=runs/ssv2_s3d

Paper (views 1x1: 1 clip, centre crop; validation): S3D / S3D-G reach 47.30 / 48.20 top-1 on SSv1
(64 frames).
Trains on GSM's recipe (docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): googlenet-1378be20.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D); the temporal halves of the separable
convs start as the identity and S3D-G's gates at their own initialisation, as the 3D nets of the
table start from ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv2_s3d.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 's3d', 64, arg)
