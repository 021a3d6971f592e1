"""PyTorch reference networks for the converter tests, written the way the released code is:
TSN's table-driven BN-Inception / Inception v3 (layer names from `architecture/*.csv`), the GSM
release's gate module, torchvision's ResNet-50 with TSM's shift wrapping each `conv1` or with
STM's blocks (the authors' code), TRN's multi-scale relation head. NCHW, eval mode;
`[N, T, 3, H, W]` clips -> `[N, classes]` logits averaged over frames (TRN: summed relations).
S3D-G from the description of TF-Slim's s3dg.py, NCDHW with TensorFlow's 'SAME' padding.
And the input normalisation those releases run on the host, in NumPy."""
import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cstm_jax.models import inception3d, trn
from cstm_jax.models.inception import load_table
from cstm_jax.models.layers import scale_channels
from cstm_jax.models.stm import MOTION_REDUCTION
from input_pipeline.conventions import NORMALISATION


def reference_normalise(clips: np.ndarray, input_norm: str) -> np.ndarray:
  """uint8 RGB clips normalised on the host, as TSN's GroupNormalize (and this project's
  pipelines, before clips went to the device as uint8) did."""
  mean, std = NORMALISATION[input_norm]
  x = clips[..., ::-1].astype(np.float32) if input_norm == 'bgr255' else clips.astype(np.float32)
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


class CMM(nn.Module):
  """STM's channel-wise motion module, as the authors' CMM.py: 1x1 conv + BN to C/16, depthwise
  3x3 conv, next frame's filtered features minus this frame's, zero last frame, 1x1 conv."""

  def __init__(self, planes: int, num_segments: int):
    super().__init__()
    reduced = max(1, planes // MOTION_REDUCTION)
    self.stage_conv = nn.Conv2d(planes, reduced, 1, bias=False)
    self.stage_bn = nn.BatchNorm2d(reduced)
    self.shift = nn.Conv2d(reduced, reduced, 3, 1, 1, groups=reduced, bias=False)
    self.conv1x1 = nn.Conv2d(reduced, planes, 1, bias=False)
    self.t = num_segments

  def forward(self, x):
    reduced = self.stage_bn(self.stage_conv(x))
    nt, c, h, w = reduced.shape
    filtered = self.shift(reduced).view(-1, self.t, c, h, w)
    motion = filtered[:, 1:] - reduced.view(-1, self.t, c, h, w)[:, :-1]
    motion = F.pad(motion, (0, 0, 0, 0, 0, 0, 0, 1))
    return self.conv1x1(motion.reshape(nt, c, h, w))


class STMBottleneck(Bottleneck):
  """The authors' STM block: conv1; CMM (max-pooled when strided) plus the channel-wise
  temporal conv (`shift`, a depthwise Conv1d) then conv2; conv3; shortcut."""

  def __init__(self, inplanes, planes, stride, num_segments):
    super().__init__(inplanes, planes, stride)
    self.shift = nn.Conv1d(planes, planes, 3, padding=1, groups=planes, bias=False)
    self.mb = CMM(planes, num_segments)
    self.t = num_segments

  def forward(self, x):
    h = torch.relu(self.bn1(self.conv1(x)))
    motion = self.mb(h)
    if self.conv2.stride[0] == 2:
      motion = F.max_pool2d(motion, 2)
    nt, c, height, width = h.shape
    clip = h.view(-1, self.t, c, height, width).permute(0, 3, 4, 2, 1).reshape(-1, c, self.t)
    clip = self.shift(clip).view(-1, height, width, c, self.t).permute(0, 4, 3, 1, 2)
    h = torch.relu(self.bn2(self.conv2(clip.reshape(nt, c, height, width)))) + motion
    h = self.bn3(self.conv3(h))
    return torch.relu(h + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
  """torchvision's ResNet-50 (stride on the 3x3 conv); TSM's shift when `num_segments` is set,
  STM's blocks with `stm`."""

  def __init__(self, width: float, num_segments=None, stm: bool = False):
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
        stride = 2 if stage and not block else 1
        blocks.append(STMBottleneck(inplanes, planes, stride, num_segments) if stm
                      else Bottleneck(inplanes, planes, stride, num_segments))
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


class RelationModuleMultiScale(nn.Module):
  """TRN's multi-scale relations over `[N, T, D]` frame features: per scale s = T..2 an MLP
  (ReLU, Linear(s D, 256), ReLU, Linear(256, classes)) over s concatenated frames, summed over
  the full relation and 3 relations of each smaller scale. The release draws those 3 at
  random in every forward; this reference takes the ones `choose(count, used)` names (the
  evaluation's choice of the Flax model)."""

  def __init__(self, feature_dim: int, num_frames: int, num_classes: int,
               choose=trn.eval_relations):
    super().__init__()
    self.scales = trn.scales(num_frames)
    self.relations = [list(itertools.combinations(range(num_frames), s)) for s in self.scales]
    self.used = [trn.relations_used(num_frames, s) for s in self.scales]
    self.fc_fusion_scales = nn.ModuleList([
        nn.Sequential(nn.ReLU(), nn.Linear(s * feature_dim, trn.BOTTLENECK), nn.ReLU(),
                      nn.Linear(trn.BOTTLENECK, num_classes)) for s in self.scales])
    self.choose = choose

  def forward(self, x):
    total = 0
    for scale, relations, used, mlp in zip(self.scales, self.relations, self.used,
                                           self.fc_fusion_scales):
      for index in self.choose(len(relations), used):
        total = total + mlp(x[:, list(relations[index])].flatten(1))
    return total


class TRN(nn.Module):
  """TRN's wrapper (TSN's, consensus TRNmultiscale): `base_model`, `new_fc` to the frame
  feature width, the relations as `consensus`."""

  def __init__(self, base_model: nn.Module, num_classes: int, num_frames: int,
               feature_dim: int = 256):
    super().__init__()
    self.base_model = base_model
    self.new_fc = nn.Linear(base_model.out_channels, feature_dim)
    self.consensus = RelationModuleMultiScale(feature_dim, num_frames, num_classes)

  def forward(self, clips):
    n, t = clips.shape[:2]
    return self.consensus(self.new_fc(self.base_model(clips.flatten(0, 1))).view(n, t, -1))

  def output_layers(self):
    return [mlp[3] for mlp in self.consensus.fc_fusion_scales]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TensorFlow's 'SAME' padding of one axis: (low, high)."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def pad_same(x, kernel, stride, value=0.0):
  """`x` `[N, C, T, H, W]` padded as TensorFlow's 'SAME' pads for `kernel` and `stride`."""
  pads = [same_padding(n, k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]
  return F.pad(x, [p for pair in reversed(pads) for p in pair], value=value)


class Unit3D(nn.Module):
  """conv (no bias, 'SAME') -> BN -> ReLU, with `kernel` (kt, kh, kw) and `stride`."""

  def __init__(self, cin, cout, kernel, stride):
    super().__init__()
    self.conv = nn.Conv3d(cin, cout, kernel, stride, bias=False)
    self.bn = nn.BatchNorm3d(cout, eps=1e-3)  # TF-Slim's
    self.kernel, self.stride = kernel, stride

  def forward(self, x):
    return torch.relu(self.bn(self.conv(pad_same(x, self.kernel, self.stride))))


class S3DG(nn.Module):
  """S3D-G: S3D's separable units (1 x k x k then k x 1 x 1), and each gated output multiplied
  by sigmoid(Linear(mean over T, H, W)). Submodules carry the Flax model's names
  (`units['Mixed_3b_b1b/conv_t']`, `gates['Mixed_3b_b1b']`)."""

  def __init__(self, width: float):
    super().__init__()
    self.units, self.gates = nn.ModuleDict(), nn.ModuleDict()
    self.channels = 3

    def unit(name, cout, k, stride=1):
      cout, cin = scale_channels(cout, width), self.channels
      if k == 1:
        self.units[f'{name}/conv'] = Unit3D(cin, cout, (1, 1, 1), (stride,) * 3)
      else:
        self.units[f'{name}/conv_s'] = Unit3D(cin, cout, (1, k, k), (1, stride, stride))
        self.units[f'{name}/conv_t'] = Unit3D(cout, cout, (k, 1, 1), (stride, 1, 1))
      self.channels = cout
      return cout

    def gate(name, channels):
      self.gates[name] = nn.Linear(channels, channels)

    unit('Conv3d_1a_7x7', 64, 7, 2)
    unit('Conv3d_2b_1x1', 64, 1)
    gate('Conv3d_2c_3x3', unit('Conv3d_2c_3x3', 192, 3))
    for name, (c0, c1a, c1b, c2a, c2b, c3) in inception3d.MIXED.items():
      cin, outs = self.channels, []
      for branch, spec in (('b0', [(c0, 1)]), ('b1', [(c1a, 1), (c1b, 3)]),
                           ('b2', [(c2a, 1), (c2b, 3)]), ('b3', [(c3, 1)])):
        self.channels = cin
        suffixes = ['a', 'b'] if len(spec) == 2 else [''] if branch == 'b0' else ['b']
        for suffix, (cout, k) in zip(suffixes, spec):
          last = unit(f'{name}_{branch}{suffix}', cout, k)
        gate(f'{name}_{branch}{suffixes[-1]}', last)
        outs.append(last)
      self.channels = sum(outs)
    self.out_channels = self.channels

  def _unit(self, name, x):
    if f'{name}/conv' in self.units:
      return self.units[f'{name}/conv'](x)
    return self.units[f'{name}/conv_t'](self.units[f'{name}/conv_s'](x))

  def _gate(self, name, x):
    weights = torch.sigmoid(self.gates[name](x.mean(dim=(2, 3, 4))))
    return x * weights[:, :, None, None, None]

  @staticmethod
  def _pool(x, window, stride):
    return F.max_pool3d(pad_same(x, window, stride, value=-float('inf')), window, stride)

  def forward(self, clips):  # [N, T, 3, H, W] -> [N, T', C]
    x = clips.permute(0, 2, 1, 3, 4)
    x = self._unit('Conv3d_1a_7x7', x)
    x = self._pool(x, *inception3d.POOLS['Conv3d_2b_1x1'])
    x = self._unit('Conv3d_2b_1x1', x)
    x = self._gate('Conv3d_2c_3x3', self._unit('Conv3d_2c_3x3', x))
    for name in inception3d.MIXED:
      if name in inception3d.POOLS:
        x = self._pool(x, *inception3d.POOLS[name])
      b0 = self._gate(f'{name}_b0', self._unit(f'{name}_b0', x))
      b1 = self._gate(f'{name}_b1b', self._unit(f'{name}_b1b', self._unit(f'{name}_b1a', x)))
      b2 = self._gate(f'{name}_b2b', self._unit(f'{name}_b2b', self._unit(f'{name}_b2a', x)))
      b3 = self._gate(f'{name}_b3b', self._unit(f'{name}_b3b',
                                                self._pool(x, (3, 3, 3), (1, 1, 1))))
      x = torch.cat([b0, b1, b2, b3], 1)
    return x.mean(dim=(3, 4)).transpose(1, 2)

  def load_flax(self, variables) -> None:
    """Copies the Flax model's `backbone` variables into this network."""
    params, stats = variables['params']['backbone'], variables['batch_stats']['backbone']
    with torch.no_grad():
      for key, module in self.units.items():
        name, part = key.split('/')
        p, s = params[name][part], stats[name][part]
        kernel = np.asarray(p['conv']['kernel'])  # [kt, kh, kw, I, O] -> [O, I, kt, kh, kw]
        module.conv.weight.copy_(torch.from_numpy(kernel.transpose(4, 3, 0, 1, 2).copy()))
        for attr, value in (('weight', p['bn']['scale']), ('bias', p['bn']['bias']),
                            ('running_mean', s['bn']['mean']), ('running_var', s['bn']['var'])):
          getattr(module.bn, attr).copy_(torch.from_numpy(np.asarray(value)))
      for name, module in self.gates.items():
        gate = params[f'{name}_gating']['gate']
        module.weight.copy_(torch.from_numpy(np.asarray(gate['kernel']).T.copy()))
        module.bias.copy_(torch.from_numpy(np.asarray(gate['bias'])))


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


def unit_logits(model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
  """Rescales the head so the logits on `clips` have unit spread (random BN statistics let the
  features grow through the depth); returns those logits."""
  layers = model.output_layers() if hasattr(model, 'output_layers') else [model.new_fc]
  with torch.no_grad():
    scale = model(clips).std()
    for layer in layers:
      layer.weight /= scale
      layer.bias /= scale
    return model(clips)


class BasicConv2d(nn.Module):
  """torchvision GoogLeNet's unit: conv (no bias) -> BN (eps 1e-3) -> ReLU."""

  def __init__(self, cin, cout, kernel, padding=0, stride=1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=1e-3)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x)))


class GoogLeNetBlock(nn.Module):
  """A mixed block of torchvision's GoogLeNet: branch1 (1x1), branch2 and branch3 (1x1 then
  3x3), branch4 (3x3 max pool, 1x1); the four concatenated."""

  def __init__(self, cin, c1, c2a, c2b, c3a, c3b, c4):
    super().__init__()
    self.branch1 = BasicConv2d(cin, c1, 1)
    self.branch2 = nn.Sequential(BasicConv2d(cin, c2a, 1), BasicConv2d(c2a, c2b, 3, 1))
    self.branch3 = nn.Sequential(BasicConv2d(cin, c3a, 1), BasicConv2d(c3a, c3b, 3, 1))
    self.branch4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(cin, c4, 1))

  def forward(self, x):
    return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNetAux(nn.Module):
  def __init__(self, cin, classes=1000):
    super().__init__()
    self.conv = BasicConv2d(cin, 128, 1)
    self.fc1 = nn.Linear(2048, 1024)
    self.fc2 = nn.Linear(1024, classes)


class GoogLeNet(nn.Module):
  """The 2D Inception-v1 with torchvision's module names (`googlenet-1378be20.pth`, with its
  auxiliary classifiers); `forward` gives the spatial mean of inception5b's output."""

  def __init__(self):
    super().__init__()
    self.conv1 = BasicConv2d(3, 64, 7, 3, 2)
    self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
    self.conv2 = BasicConv2d(64, 64, 1)
    self.conv3 = BasicConv2d(64, 192, 3, 1)
    self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
    cin = 192
    for name, widths in zip(('3a', '3b', '4a', '4b', '4c', '4d', '4e', '5a', '5b'),
                            ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),
                             (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
                             (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
                             (256, 160, 320, 32, 128, 128), (256, 160, 320, 32, 128, 128),
                             (384, 192, 384, 48, 128, 128))):
      setattr(self, f'inception{name}', GoogLeNetBlock(cin, *widths))
      cin = widths[0] + widths[2] + widths[4] + widths[5]
    self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
    self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
    self.aux1, self.aux2 = GoogLeNetAux(512), GoogLeNetAux(528)
    self.fc = nn.Linear(1024, 1000)

  def forward(self, x):
    x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
    for name in ('3a', '3b', 'pool3', '4a', '4b', '4c', '4d', '4e', 'pool4', '5a', '5b'):
      x = (getattr(self, f'max{name}') if name.startswith('pool') else
           getattr(self, f'inception{name}'))(x)
    return x.mean(dim=(2, 3))
