"""The demo: CSTM against TSN on the synthetic SSv2-format dataset, on a CPU.

  make demo        # or: python -m cstm_jax.demo

`python main.py --config=configs/demo.py:cstm --workdir=runs/demo/cstm` trains one of them
(`:tsn` the other) once `python -m cstm_jax.demo --prepare_only` has made the data. The
synthetic classes come in time-reversed pairs, so TSN (no temporal modelling) stays near chance
inside each pair while CSTM separates them.
"""
from cstm_foundation.errors import ConfigError
from cstm_jax.config import defaults, zoo

DATA = 'data/demo'


def get_config(arg: str = 'cstm'):
  """'cstm', 'tsn', ... (a temporal module), each optionally ':smoke'; 'smoke' alone is CSTM's."""
  temporal, _, size = ('cstm:smoke' if arg == 'smoke' else arg).partition(':')
  if temporal not in zoo.TEMPORAL_MODULES:
    raise ConfigError(f'demo config argument {arg!r}: expected a temporal module, e.g. "cstm"')
  config = defaults.experiment('ssv2', f'{temporal}_bninception', 8, '', width=0.25,
                               num_classes=12, dropout=0.2, dtype='float32')  # a CPU run
  config.data.update(data_dir=f'{DATA}/prepared', crop=32, test_scale=32, scales=(1.0, 0.875),
                     batch_size=16, eval_batch_size=32, num_workers=0)
  # From scratch rather than from ImageNet weights: AdamW converges in the few minutes a CPU has.
  # The lr moves every step: a smooth curve suits a short AdamW run (the demo's figures).
  config.optim.update(optimizer='adamw', base_lr=0.002, base_batch=16, epochs=24.0,
                      warmup_epochs=1.0, weight_decay=1e-4, grad_accum_steps=1,
                      lr_every='step', cosine_min_ratio=0.0)
  config.train.update(log_every_steps=50, checkpoint_every_steps=500, eval_every_epochs=8.0,
                      init_from='scratch')  # the demo trains a small copy from random weights
  config.eval.update(final_views='1x1', checkpoint='latest', tsne_examples=600)
  return defaults.shrink(config, size)
