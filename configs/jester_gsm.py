"""GSM, BN-Inception, 8 frames, Jester (Table 3 of the paper).

  python main.py --config=configs/jester_gsm.py --workdir=runs/jester_gsm

Paper (Table 3; views 1x1: 1 clip, centre crop; validation): 95.73 / 99.83 top-1 / top-5 (%).
On GSM's own recipe (swathikirans/GSM main.py and its README's command: --batch-size 16 --iter_size
2 --lr 0.01 --warmup 10 --epochs 60 --gd 20 --npb --gsm), the base config.
Starts from ImageNet (`train.init_from=imagenet`): bn_inception-9f5701afb96c8044.pth, the network
TSN and GSM train from.
`--config=configs/jester_gsm.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'gsm_bninception', 8, arg)
