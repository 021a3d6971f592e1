"""TRN's multi-scale temporal relations (Zhou et al., ECCV 2018, "Temporal Relational Reasoning
in Videos"), as the released `RelationModuleMultiScale` builds them: the head that turns
per-frame features into clip logits in place of TSN's average.

For every scale s = T, T-1, ..., 2 the relations are the ordered s-frame subsets of the clip
(`itertools.combinations`, frames in time order); each scale has its own MLP
`ReLU -> Dense(256) -> ReLU -> Dense(classes)` over the s concatenated frame features, and the
clip's logits are the sum over scales of that MLP over some of the scale's relations: the one
T-frame relation, and `SUBSAMPLE` = 3 of the others at each smaller scale.

Which 3: training draws them at random in each step, as the release does (one draw per
batch, from the 'dropout' random stream). The release draws at test time too; here evaluation
takes the 3 relations spread evenly through the scale's list (`eval_relations`), so a
checkpoint's accuracy is one number.
"""
import functools
import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BOTTLENECK = 256  # hidden width of each scale's MLP (the release's num_bottleneck)
# The relations of every scale are listed, as the release lists them: C(16, 8) = 12,870 at 16
# frames, C(32, 16) = 601 million at 32.
MAX_FRAMES = 16
SUBSAMPLE = 3     # relations summed per scale below the largest (the release's subsample_num)


def relations(num_frames: int, scale: int) -> np.ndarray:
  """The `scale`-frame relations of a `num_frames` clip, `[C(num_frames, scale), scale]` frame
  indices in time order, listed as `itertools.combinations` lists them."""
  return np.array(list(itertools.combinations(range(num_frames), scale)), np.int32)


def scales(num_frames: int) -> list[int]:
  """The relation sizes, largest first: T, T-1, ..., 2."""
  return list(range(num_frames, 1, -1))


def relations_used(num_frames: int, scale: int) -> int:
  """How many relations of `scale` one forward sums: 1 at the full clip, else up to 3."""
  count = len(relations(num_frames, scale))
  return 1 if scale == num_frames else min(SUBSAMPLE, count)


def eval_relations(count: int, used: int) -> np.ndarray:
  """The indices of the relations evaluation uses: `used` of `count`, spread evenly."""
  return np.round(np.linspace(0, count - 1, used)).astype(np.int32)


def pytorch_index(num_frames: int, scale: int) -> int:
  """Index of `scale`'s MLP in the release's `fc_fusion_scales` (largest scale first)."""
  return num_frames - scale


def _torch_linear_bias(key, shape, dtype, fan_in: int):
  """PyTorch's nn.Linear bias initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  return jax.random.uniform(key, shape, dtype, -1, 1) / np.sqrt(fan_in)


class RelationMLP(nn.Module):
  """One scale's MLP, `ReLU -> hidden -> ReLU -> out`, with PyTorch's nn.Linear initialisation
  (the release leaves its layers at it). `[..., D]` -> `[..., num_classes]` in float32."""
  num_classes: int
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    def dense(features, fan_in, name):
      return nn.Dense(features, dtype=jnp.float32, param_dtype=self.param_dtype, name=name,
                      kernel_init=nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform'),
                      bias_init=functools.partial(_torch_linear_bias, fan_in=fan_in))

    h = dense(BOTTLENECK, x.shape[-1], 'hidden')(nn.relu(x))
    return dense(self.num_classes, BOTTLENECK, 'out')(nn.relu(h))


class RelationHead(nn.Module):
  """Per-frame features `[N, T, C]` -> clip logits `[N, num_classes]` (float32).

  Submodules: `embed` (TRN's `new_fc`, C -> `feature_dim`, N(0, 0.001) as TSN initialises its
  head) and, per scale s, `relation{s}` (a `RelationMLP`).

  Attributes:
    num_classes: classes of the logits.
    feature_dim: width of the frame features the relations concatenate (the release's
      `img_feature_dim`, 256).
  """
  num_classes: int
  feature_dim: int = 256
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, train: bool = False):
    n, num_frames, _ = features.shape
    if not 2 <= num_frames <= MAX_FRAMES:
      raise ValueError(f'TRN relates the frames of a clip: it takes 2 to {MAX_FRAMES} frames '
                       f'(it lists every subset of them), not {num_frames}')
    frames = nn.Dense(self.feature_dim, dtype=jnp.float32, param_dtype=self.param_dtype,
                      kernel_init=nn.initializers.normal(0.001), name='embed')(features)
    logits = jnp.zeros((n, self.num_classes), jnp.float32)
    for scale in scales(num_frames):
      table = relations(num_frames, scale)
      used = relations_used(num_frames, scale)
      if train and used < len(table):
        drawn = jax.random.choice(self.make_rng('dropout'), len(table), (used,), replace=False)
        chosen = jnp.asarray(table)[drawn]
      else:
        chosen = jnp.asarray(table[eval_relations(len(table), used)])
      # [N, used, scale * feature_dim]: each relation's frames, concatenated in time order.
      x = frames[:, chosen].reshape(n, used, scale * self.feature_dim)
      mlp = RelationMLP(self.num_classes, self.param_dtype, name=f'relation{scale}')
      logits = logits + jnp.sum(mlp(x), axis=1)
    return logits
