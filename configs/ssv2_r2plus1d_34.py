"""3D baseline r2plus1d_34 on Something-Something v2, 32 frames.

  python main.py --config=configs/ssv2_r2plus1d_34.py --workdir=runs/ssv2_r2plus1d_34

Paper (views 1x1: 1 clip, centre crop; validation): not reported in the paper.
Trains on GSM's recipe (docs/design.md, "Recipe").
Trains from scratch (`train.init_from=scratch`), as the R(2+1)D paper does (Tran et al. 2018); no
ImageNet or Kinetics weights are used.
`--config=configs/ssv2_r2plus1d_34.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'r2plus1d_34', 32, arg)
