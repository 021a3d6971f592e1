"""What a compiled step does, read from its optimised HLO text: kernels, collectives, convolution
layouts and layout-changing copies. Works for any backend's `compiled.as_text()`.

A "kernel" is an instruction of a non-fused computation (the entry, loop bodies, branches) that
launches work: a fusion, a library call (cuDNN, cuBLAS), a copy or transpose, a collective.
Parameters, tuples, bitcasts and control flow launch nothing and are not counted.
"""
import collections
import dataclasses
import re

DTYPE_BYTES = {'pred': 1, 's4': 1, 'u4': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1,
               'bf16': 2, 'f16': 2, 's16': 2, 'u16': 2, 'f32': 4, 's32': 4, 'u32': 4,
               'f64': 8, 's64': 8, 'u64': 8, 'c64': 8, 'c128': 16, 'token': 0}
COLLECTIVES = ('all-reduce', 'all-gather', 'reduce-scatter', 'all-to-all', 'collective-permute',
               'collective-broadcast', 'ragged-all-to-all')
NOT_KERNELS = {'parameter', 'get-tuple-element', 'tuple', 'constant', 'bitcast', 'while',
               'conditional', 'call', 'after-all', 'partition-id', 'replica-id', 'opt-barrier',
               'add-dependency', 'domain', 'send-done', 'recv-done', 'copy-done', 'async-done',
               'async-update', 'get-dimension-size', 'iota'}
# Ops that only move or reinterpret data: a fusion of nothing else is a layout change.
DATA_MOVEMENT = {'parameter', 'transpose', 'copy', 'bitcast', 'reshape', 'convert', 'tuple',
                 'get-tuple-element'}

_COMPUTATION = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_SHAPE = re.compile(r'\b([a-z]+\d*(?:e\dm\d(?:fn)?)?)\[([\d,]*)\]')


@dataclasses.dataclass
class Instruction:
  name: str
  shape: str     # result shape text, e.g. 'bf16[8,28,28,64]{3,2,1,0}' or a tuple
  opcode: str
  attrs: str     # everything after the operand list


def first_cost(cost_analysis) -> dict:
  """`compiled.cost_analysis()` / `lowered.cost_analysis()` as one dict (older jax gives a list
  of one); {} when the backend gives none."""
  if isinstance(cost_analysis, (list, tuple)):
    cost_analysis = cost_analysis[0] if cost_analysis else None
  return cost_analysis or {}


def shape_bytes(shape: str) -> int:
  """Bytes of an HLO shape (tuples summed)."""
  total = 0
  for dtype, dims in _SHAPE.findall(shape):
    size = DTYPE_BYTES.get(dtype)
    if size is None:
      continue
    count = 1
    for d in filter(None, dims.split(',')):
      count *= int(d)
    total += size * count
  return total


def _split_instruction(line: str):
  """'%n = SHAPE opcode(operands), attrs' -> Instruction, or None for other lines."""
  line = line.strip()
  if line.startswith('ROOT '):
    line = line[5:]
  name, eq, rest = line.partition(' = ')
  if not eq or ' ' in name.strip():
    return None
  rest = rest.strip()
  if rest.startswith('('):  # tuple shape: up to its balanced closing parenthesis
    depth = 0
    for i, ch in enumerate(rest):
      depth += (ch == '(') - (ch == ')')
      if depth == 0:
        break
    shape, rest = rest[:i + 1], rest[i + 1:].strip()
  else:
    shape, _, rest = rest.partition(' ')
  opcode, paren, after = rest.partition('(')
  if not paren:
    return None
  depth, end = 1, len(after)
  for i, ch in enumerate(after):
    depth += (ch == '(') - (ch == ')')
    if depth == 0:
      end = i
      break
  return Instruction(name.strip().lstrip('%'), shape, opcode.strip(), after[end + 1:])


def parse(hlo_text: str) -> dict[str, list[Instruction]]:
  """Computation name -> its instructions; the entry computation is under 'ENTRY'."""
  computations, current = {}, None
  for line in hlo_text.splitlines():
    stripped = line.strip()
    if current is None:
      m = _COMPUTATION.match(stripped)
      if m and '=' not in stripped.split('(')[0]:
        current = 'ENTRY' if m.group(1) else m.group(2)
        computations[current] = []
      continue
    if stripped == '}':
      current = None
      continue
    instruction = _split_instruction(stripped)
    if instruction:
      computations[current].append(instruction)
  return computations


def _called(attrs: str, key: str) -> list[str]:
  m = re.search(key + r'=\{?([%\w.\-, ]+)\}?', attrs)
  return [n.strip().lstrip('%') for n in m.group(1).split(',')] if m else []


def _attr(attrs: str, key: str) -> str:
  m = re.search(key + r'=\{?"?([^",}]+)', attrs)
  return m.group(1) if m else ''


@dataclasses.dataclass
class StepStats:
  kernels: int = 0
  fusions: int = 0
  library_calls: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  # Layout changes: transposes (ops, or fusions that only move data and transpose it) and
  # copies (between layouts or buffers), with the bytes they read and write.
  transposes: int = 0
  transpose_bytes: int = 0
  copies: int = 0
  copy_bytes: int = 0
  collectives: dict = dataclasses.field(default_factory=dict)  # kind -> {'count', 'bytes'}
  conv_layouts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  all_gathers: list = dataclasses.field(default_factory=list)  # (shape, gathered dimensions)


def step_stats(hlo_text: str) -> StepStats:
  computations = parse(hlo_text)
  fused, helpers = set(), set()
  for instructions in computations.values():
    for ins in instructions:
      if ins.opcode == 'fusion':
        fused.update(_called(ins.attrs, 'calls'))
      helpers.update(_called(ins.attrs, 'to_apply'))
  stats = StepStats()
  for name, instructions in computations.items():
    if name in fused or name in helpers:
      continue
    for ins in instructions:
      _count(ins, computations, stats)
  return stats


def _count(ins: Instruction, computations, stats: StepStats) -> None:
  op = ins.opcode
  if op in NOT_KERNELS or op.endswith('-done'):
    return
  base = op[:-len('-start')] if op.endswith('-start') else op
  stats.kernels += 1
  if base in COLLECTIVES:
    entry = stats.collectives.setdefault(base, {'count': 0, 'bytes': 0})
    entry['count'] += 1
    nbytes = shape_bytes(ins.shape)
    if op.endswith('-start') and ins.shape.startswith('('):  # (operands, results): the results
      nbytes = max(shape_bytes(s) for s in _tuple_parts(ins.shape))
    entry['bytes'] += nbytes
    if base == 'all-gather':
      stats.all_gathers.append((ins.shape, _attr(ins.attrs, 'dimensions')))
    return
  if op == 'custom-call':
    target = _attr(ins.attrs, 'custom_call_target')
    stats.library_calls[_library(target)] += 1
    if 'conv' in target.lower():
      stats.conv_layouts[_conv_key(_attr(ins.attrs, 'dim_labels'))] += 1
    return
  body = _body(ins, computations) if op == 'fusion' else []
  moved = 2 * shape_bytes(ins.shape)  # read once, written once
  if op == 'transpose' or (_moves_data_only(body) and any(i.opcode == 'transpose' for i in body)):
    stats.transposes += 1
    stats.transpose_bytes += moved
  elif op == 'copy' or _moves_data_only(body):
    stats.copies += 1
    stats.copy_bytes += moved
  if op == 'fusion':
    stats.fusions += 1
    for inner in body:  # convolutions fused by the backend (TPU, cuDNN fusions)
      if inner.opcode == 'convolution':
        stats.conv_layouts[_conv_key(_attr(inner.attrs, 'dim_labels'))] += 1


def _conv_key(dim_labels: str) -> str:
  """'b012f_012io->b012f' -> '3d b012f_012io->b012f' (b batch, f features, digits spatial)."""
  return f'{len(dim_labels.split("_")[0]) - 2}d {dim_labels}'


def _body(ins: Instruction, computations) -> list[Instruction]:
  return [i for c in _called(ins.attrs, 'calls') for i in computations.get(c, [])]


def _moves_data_only(body: list[Instruction]) -> bool:
  return bool(body) and all(i.opcode in DATA_MOVEMENT for i in body) and any(
      i.opcode in ('transpose', 'copy') for i in body)


def _library(target: str) -> str:
  lower = target.lower()
  if 'cudnn' in lower:
    return 'cudnn'
  if 'cublas' in lower or 'gemm' in lower:
    return 'cublas'
  return target


def _tuple_parts(shape: str) -> list[str]:
  inner, parts, depth, start = shape[1:-1], [], 0, 0
  for i, ch in enumerate(inner):
    depth += (ch in '([{') - (ch in ')]}')
    if ch == ',' and depth == 0:
      parts.append(inner[start:i])
      start = i + 1
  parts.append(inner[start:])
  return parts
