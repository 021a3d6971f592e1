"""CSTM, BN-Inception, 8 frames, on your own videos (docs/training.md, "Your own videos").

  python -m input_pipeline.prepare --dataset folder --manual_dir ~/my_videos \
      --data_dir ~/tensorflow_datasets
  python main.py --config=configs/folder_8f.py --workdir=runs/my_videos \
      --config.train.init_from=~/weights/bninception

The class count is the prepared dataset's (model.num_classes 0); the data is read from
`--config.data.data_dir` (default ~/tensorflow_datasets). Flips swap the labels of classes
whose names mirror each other ('... left to right' / '... right to left').
`--config=configs/folder_8f.py:smoke` shrinks it to a tiny CPU run.
"""
from cstm_jax.config import defaults


def get_config(arg: str = ''):
  return defaults.experiment('folder', 'cstm_bninception', 8, arg)
