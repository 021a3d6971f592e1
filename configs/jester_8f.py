"""CSTM, BN-Inception, 8 frames, Jester.

  python main.py --config=configs/jester_8f.py --workdir=runs/jester_8f

Paper (views 1x1: 1 clip, centre crop; validation): 96.40 / 99.84 top-1 / top-5 (%).
`--config=configs/jester_8f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'cstm_bninception', 8, arg)
