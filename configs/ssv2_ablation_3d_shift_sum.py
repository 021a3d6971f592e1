"""SSv2 ablation: 3d_shift_sum on BN-Inception, 8 frames (the CSTM row is configs/ssv2_8f.py).

  python main.py --config=configs/ssv2_ablation_3d_shift_sum.py --workdir=runs/ssv2_ablation_3d_shift_sum

Paper (views 1x1: 1 clip, centre crop; validation): 61.65 / 87.56 top-1 / top-5 (%).
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/ssv2_ablation_3d_shift_sum.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', '3d_shift_sum_bninception', 8, arg)
