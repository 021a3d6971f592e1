"""GSM, BN-Inception, 8 frames, Something-Something v1 (Table 3 of the paper).

  python main.py --config=configs/ssv1_gsm.py --workdir=runs/ssv1_gsm

Paper (Table 3; views 1x1: 1 clip, centre crop; validation): 47.24 top-1 (%).
On GSM's own recipe (swathikirans/GSM main.py and its README's command: --batch-size 16 --iter_size
2 --lr 0.01 --warmup 10 --epochs 60 --gd 20 --npb --gsm), the base config.
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/ssv1_gsm.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('ssv1', 'gsm_bninception', 8, arg)
