"""BatchNorm as the PyTorch references train it, shared by the temporal modules and backbones."""
from typing import Any

import flax.linen as nn

BN_MOMENTUM = 0.9  # Flax keeps 0.9 of the old statistics: PyTorch's momentum 0.1
BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype: Any, param_dtype: Any, name: str) -> nn.BatchNorm:
  """BatchNorm with PyTorch's settings (eps 1e-5, momentum 0.1); statistics over all but C.

  Training normalises with the batch's statistics and updates the running ones (mutable
  'batch_stats'); evaluation uses the running ones.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                      dtype=dtype, param_dtype=param_dtype, name=name)
