"""3D baseline S3D-G (S3D with self-gating) on Something-Something v1, 64 frames.

  python main.py --config=configs/ssv1_s3dg.py --workdir=runs/ssv1_s3dg

Paper (views 1x1: 1 clip, centre crop; validation): 48.20 / 78.70 top-1 / top-5 (%); S3D 47.30 /
78.10.
Trains on GSM's recipe, not on the setting of the paper's number
(docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): googlenet-1378be20.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D); the temporal halves of the separable
convs start as the identity and S3D-G's gates at their own initialisation, as the 3D nets of the
table start from ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv1_s3dg.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 's3dg', 64, arg)
