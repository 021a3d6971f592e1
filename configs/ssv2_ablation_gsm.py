"""SSv2 ablation: gsm on BN-Inception, 8 frames (the CSTM row is configs/ssv2_8f.py).

  python main.py --config=configs/ssv2_ablation_gsm.py --workdir=runs/ssv2_ablation_gsm

Paper (views 1x1: 1 clip, centre crop; validation): 61.23 / 87.29 top-1 / top-5 (%).
On GSM's own recipe, the base config (swathikirans/GSM main.py and its README's command;
docs/design.md, "Recipe").
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/ssv2_ablation_gsm.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv2', 'gsm_bninception', 8, arg)
