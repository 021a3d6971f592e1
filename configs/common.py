"""Blocks shared by the experiment configs."""
import ml_collections

from cstm_jax.models.build import model_config


def model(name: str, **overrides) -> ml_collections.ConfigDict:
  """The `config.model` block of a named model (see `cstm_jax.MODELS`)."""
  return model_config(name, **overrides)


def shrink_for_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A tiny CPU version of any experiment: small width, few frames, few classes."""
  config.model.width = 0.125
  config.model.num_frames = 4
  return config
