"""cstm-jax: CSTM and its baselines for video action recognition in JAX/Flax.

`cstm_jax.models.build.build_model(cstm_jax.config.defaults.model_config('cstm_bninception'))`
gives a Flax module; README.md's Layout section says where everything else is.
"""
