"""3D baseline s3d on Something-Something v2, 64 frames.

  python main.py --config=configs/ssv2_s3d.py --workdir=runs/ssv2_s3d

Paper (views 1x1: 1 clip, centre crop; validation): S3D / S3D-G reach 47.30 / 48.20 top-1 on SSv1
(64 frames).
Trains on GSM's recipe from scratch (docs/design.md, "Recipe").
`--config=configs/ssv2_s3d.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 's3d', 64, arg)
