"""CSTM, BN-Inception, 16 frames, Jester.

  python main.py --config=configs/jester_16f.py --workdir=runs/jester_16f

Paper (views 1x1: 1 clip, centre crop; validation): 96.48 / 99.87 top-1 / top-5 (%).
`--config=configs/jester_16f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('jester', 'cstm_bninception', 16, arg)
