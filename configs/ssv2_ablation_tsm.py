"""SSv2 ablation: tsm on BN-Inception, 8 frames (the CSTM row is configs/ssv2_8f.py).

  python main.py --config=configs/ssv2_ablation_tsm.py --workdir=runs/ssv2_ablation_tsm

Paper (views 1x1: 1 clip, centre crop; validation): not in the ablation table (TSN / TSM ResNet-50
rows:
27.80 / 57.60 and 58.20 / 84.80).
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/ssv2_ablation_tsm.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'tsm_bninception', 8, arg)
