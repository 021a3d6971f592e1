"""PyTorch reference networks for the converter tests, written the way the released code is:
TSN's table-driven BN-Inception / Inception v3 (layer names from `architecture/*.csv`), the GSM
release's gate module, torchvision's ResNet-50 with TSM's shift wrapping each `conv1`.
NCHW, eval mode; `[N, T, 3, H, W]` clips -> `[N, classes]` logits averaged over frames.
And the input normalisation those releases run on the host, in NumPy."""
import numpy as np
import torch
from torch import nn

from cstm_jax.models.inception import load_table
from cstm_jax.models.layers import scale_channels
from input_pipeline.conventions import NORMALISATION


def reference_normalise(clips: np.ndarray, colour: str) -> np.ndarray:
  """uint8 RGB clips normalised on the host, as TSN's GroupNormalize (and this project's
  pipelines, before clips went to the device as uint8) did."""
  mean, std = NORMALISATION[colour]
  x = clips[..., ::-1].astype(np.float32) if colour == 'bgr255' else clips.astype(np.float32)
  return (x - mean) / std


class GSM(nn.Module):
  """The GSM release's gsmModule: tanh gate from a grouped 3D conv, gated zero-padded shifts
  both ways, the two halves' channels interleaved."""

  def __init__(self, channels: int, num_segments: int):
    super().__init__()
    self.conv3D = nn.Conv3d(channels, 2, 3, padding=1, groups=2)
    self.bn = nn.BatchNorm3d(channels)
    self.channels, self.num_segments = channels, num_segments

  def forward(self, x):
    n, c, h, w = x.shape[0] // self.num_segments, *x.shape[1:]
    t = self.num_segments
    x = x.view(n, t, c, h, w).permute(0, 2, 1, 3, 4)
    gate = torch.tanh(self.conv3D(torch.relu(self.bn(x))))
    x1, x2 = x[:, :c // 2], x[:, c // 2:]
    y1, y2 = gate[:, 0:1] * x1, gate[:, 1:2] * x2
    zeros = torch.zeros_like(y1[:, :, :1])
    y1 = torch.cat([y1[:, :, 1:], zeros], 2) + (x1 - y1)   # toward the past
    y2 = torch.cat([zeros, y2[:, :, :-1]], 2) + (x2 - y2)  # toward the future
    interleave = lambda y: y.view(n, 2, c // 4, t, h, w).permute(0, 2, 1, 3, 4, 5).reshape(
        n, c // 2, t, h, w)
    y = torch.cat([interleave(y1), interleave(y2)], 1)
    return y.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)


class InceptionBase(nn.Module):
  """TSN's BNInception / InceptionV3 built from the layer table; GSM after the marked convs."""

  def __init__(self, backbone: str, width: float, num_segments: int, gsm: bool = False):
    super().__init__()
    self.table, self.features = load_table(backbone)
    self.gsm = gsm
    channels = {'data': 3}
    for layer in self.table:
      if layer.op == 'conv':
        out = scale_channels(layer.channels, width)
        setattr(self, layer.name, nn.Conv2d(channels[layer.inputs[0]], out, layer.kernel,
                                            layer.stride, layer.pad, bias=True))
        setattr(self, layer.bn, nn.BatchNorm2d(out))
        if gsm and layer.temporal:
          setattr(self, f'gsm_{layer.name}', GSM(out, num_segments))
      elif layer.op == 'maxpool':
        setattr(self, layer.output, nn.MaxPool2d(layer.kernel, layer.stride, layer.pad,
                                                 ceil_mode=True))
        out = channels[layer.inputs[0]]
      elif layer.op == 'avgpool':
        setattr(self, layer.output, nn.AvgPool2d(layer.kernel, layer.stride, layer.pad))
        out = channels[layer.inputs[0]]
      else:
        out = sum(channels[name] for name in layer.inputs)
      channels[layer.output] = out
    self.out_channels = channels[self.features]

  def forward(self, x):
    tensors = {'data': x}
    for layer in self.table:
      inputs = [tensors[name] for name in layer.inputs]
      if layer.op == 'conv':
        y = getattr(self, layer.name)(inputs[0])
        if self.gsm and layer.temporal:
          y = getattr(self, f'gsm_{layer.name}')(y)
        y = torch.relu(getattr(self, layer.bn)(y))
      elif layer.op in ('maxpool', 'avgpool'):
        y = getattr(self, layer.output)(inputs[0])
      else:
        y = torch.cat(inputs, 1)
      tensors[layer.output] = y
    return tensors[self.features].mean(dim=(2, 3))


class TemporalShift(nn.Module):
  """TSM's wrapper: shift 1/8 of the channels each way in time, then the wrapped conv (`.net`)."""

  def __init__(self, net: nn.Module, num_segments: int, fold_div: int = 8):
    super().__init__()
    self.net, self.num_segments, self.fold_div = net, num_segments, fold_div

  def forward(self, x):
    nt, c, h, w = x.shape
    x = x.view(nt // self.num_segments, self.num_segments, c, h, w)
    fold = c // self.fold_div
    out = torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return self.net(out.view(nt, c, h, w))


class Bottleneck(nn.Module):
  def __init__(self, inplanes, planes, stride, num_segments=None):
    super().__init__()
    conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.conv1 = conv1 if num_segments is None else TemporalShift(conv1, num_segments)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    h = torch.relu(self.bn1(self.conv1(x)))
    h = torch.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision's ResNet-50 (stride on the 3x3 conv); TSM's shift when `num_segments` is set."""

  def __init__(self, width: float, num_segments=None):
    super().__init__()
    stem = scale_channels(64, width)
    self.conv1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = stem
    for stage, (depth, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
      planes = scale_channels(planes, width)
      blocks = []
      for block in range(depth):
        blocks.append(Bottleneck(inplanes, planes, 2 if stage and not block else 1,
                                 num_segments))
        inplanes = planes * 4
      setattr(self, f'layer{stage + 1}', nn.Sequential(*blocks))
    self.out_channels = inplanes

  def forward(self, x):
    x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
    for stage in range(1, 5):
      x = getattr(self, f'layer{stage}')(x)
    return x.mean(dim=(2, 3))


class TSN(nn.Module):
  """TSN's wrapper: `base_model`, dropout, `new_fc` per frame, average consensus."""

  def __init__(self, base_model: nn.Module, num_classes: int):
    super().__init__()
    self.base_model = base_model
    self.new_fc = nn.Linear(base_model.out_channels, num_classes)

  def forward(self, clips):
    n, t = clips.shape[:2]
    features = self.base_model(clips.flatten(0, 1))
    return self.new_fc(features).view(n, t, -1).mean(1)


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and random BatchNorm statistics (all nonzero), eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      if not tensor.is_floating_point():
        continue
      if name.endswith('running_var') or (name.endswith('weight') and tensor.ndim == 1):
        tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
      elif tensor.ndim >= 2:  # conv / linear weights at He scale keep activations O(1)
        fan_in = tensor[0].numel()
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
      else:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
  return model.eval()


def unit_logits(model: TSN, clips: torch.Tensor) -> torch.Tensor:
  """Rescales the head so the logits on `clips` have unit spread (random BN statistics let the
  features grow through the depth); returns those logits."""
  with torch.no_grad():
    scale = model(clips).std()
    model.new_fc.weight /= scale
    model.new_fc.bias /= scale
    return model(clips)
