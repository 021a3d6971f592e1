"""cstm-jax: CSTM and its baselines for video action recognition in JAX/Flax."""
from cstm_jax.models.build import build_model, model_config, MODELS

__all__ = ['build_model', 'model_config', 'MODELS']
