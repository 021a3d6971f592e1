"""3D baseline S3D, 64 frames, Something-Something v1 (Table 3 of the paper).

  python main.py --config=configs/ssv1_s3d.py --workdir=runs/ssv1_s3d

Paper (Table 3; views 1x1: 1 clip, centre crop; validation): 47.30 / 78.10 top-1 / top-5 (%).
Trains on GSM's recipe, not on the setting of the paper's number (docs/design.md, "Recipe"); Xie et
al. train S3D on Something-something at 64 frames.
Starts from ImageNet (`train.init_from=imagenet`): googlenet-1378be20.pth inflated, each 2D kernel
repeated along time and divided by its temporal size (I3D); the temporal halves of the separable
convs start as the identity and S3D-G's gates at their own initialisation, as the 3D nets of the
table start from ImageNet (docs/design.md, "Starting weights").
`--config=configs/ssv1_s3d.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 's3d', 64, arg)
