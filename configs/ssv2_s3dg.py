"""3D baseline S3D-G (S3D with self-gating) on Something-Something v2, 64 frames.

  python main.py --config=configs/ssv2_s3dg.py --workdir=runs/ssv2_s3dg

Paper (views 1x1: 1 clip, centre crop; validation): S3D-G reaches 48.20 / 78.70 top-1 / top-5 on
SSv1 at 64 frames (configs/ssv1_s3dg.py); it gives no SSv2 figure.
Trains on GSM's recipe, not on the setting of the paper's number
(docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): googlenet-1378be20.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D); the temporal halves of the separable
convs start as the identity and S3D-G's gates at their own initialisation, as the 3D nets of the
table start from ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv2_s3dg.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 's3dg', 64, arg)
