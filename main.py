"""Entry point: `python main.py --config=configs/ssv2_16f.py --workdir=DIR`.

The config is locked, so a misspelt `--config.model.widht=...` is an error. Training and
evaluation arrive with the training issue; for now the job builds the configured model and
reports its size and cost.
"""
from absl import app, flags, logging
from ml_collections import config_flags

from cstm_jax.models.summary import summarize_config

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  row = summarize_config(FLAGS.config.model)  # refuses unknown keys and impossible combinations
  logging.info('model %s: %.2f M parameters, %.2f GMACs per %d-frame clip', row['model'],
               row['params'] / 1e6, row['gmacs'], row['frames'])
  print(f"{row['model']}: {row['params'] / 1e6:.2f} M parameters, {row['gmacs']:.2f} GMACs per "
        f"{row['frames']}-frame clip at {row['crop']}px (workdir {FLAGS.workdir})")


if __name__ == '__main__':
  app.run(main)
