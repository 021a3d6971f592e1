"""Annotation files of SSv2, SSv1, Jester and generic folders: class names, video lists, flips.

Every reader raises `AnnotationError` naming the file when it is not in the expected format.
"""
import collections
import csv
import dataclasses
import json
import pathlib
import re

from cstm_foundation.errors import UserError


class AnnotationError(UserError, ValueError):
  """An annotation file that is not in the expected format."""

  def __init__(self, path, problem: str):
    super().__init__(f'{path}: {problem}')


@dataclasses.dataclass(frozen=True)
class VideoEntry:
  video_id: str
  path: pathlib.Path        # a video file or a folder of JPEG frames
  label: str | None         # class name; None for unlabelled (test) entries


def unique(entries: list[VideoEntry], source) -> list[VideoEntry]:
  """`entries`, if no video id occurs twice in them (the dataset is keyed by id); else an
  AnnotationError naming the repeated ids, before any video is decoded."""
  files = collections.defaultdict(list)
  for entry in entries:
    files[entry.video_id].append(entry.path.name)
  repeated = {video_id: names for video_id, names in files.items() if len(names) > 1}
  if repeated:
    listed = '; '.join(f'{i} ({", ".join(names)})' for i, names in list(repeated.items())[:5])
    raise AnnotationError(source, f'{len(repeated)} video ids occur more than once: {listed}'
                          f'{" ..." if len(repeated) > 5 else ""}; give each video one entry')
  return entries


def shared_ids(train: list[VideoEntry], validation: list[VideoEntry]) -> list[str]:
  """Ids that are in both splits (a video trained on and evaluated on)."""
  return sorted({e.video_id for e in train} & {e.video_id for e in validation})


# --- Something-Something v2: json ----------------------------------------------------------

SSV2_PREFIX = 'something-something-v2'
SSV2_VIDEOS = '20bn-something-something-v2'


def _load_json(path: pathlib.Path):
  if not path.exists():
    raise AnnotationError(path, 'file not found')
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise AnnotationError(path, f'not valid JSON ({e})') from e


def ssv2_template_to_class(template: str) -> str:
  """'Holding [something] next to [something]' -> 'Holding something next to something'."""
  return template.replace('[', '').replace(']', '')


def read_ssv2_classes(manual_dir) -> list[str]:
  """Class names ordered by their index in `something-something-v2-labels.json`."""
  path = pathlib.Path(manual_dir) / f'{SSV2_PREFIX}-labels.json'
  labels = _load_json(path)
  if not isinstance(labels, dict) or not all(
      isinstance(v, str) and v.isdigit() for v in labels.values()):
    raise AnnotationError(path, 'expected an object mapping class text to an index string')
  by_index = sorted(labels, key=lambda name: int(labels[name]))
  if [int(labels[n]) for n in by_index] != list(range(len(by_index))):
    raise AnnotationError(path, 'class indices are not 0..N-1')
  return by_index


def read_ssv2_split(manual_dir, split: str) -> list[VideoEntry]:
  """Entries of `-train.json`, `-validation.json` (labelled) or `-test.json` (ids only)."""
  root = pathlib.Path(manual_dir)
  path = root / f'{SSV2_PREFIX}-{split}.json'
  items = _load_json(path)
  if not isinstance(items, list):
    raise AnnotationError(path, 'expected a list of objects with "id" (and "template")')
  entries = []
  for i, item in enumerate(items):
    needed = ('id',) if split == 'test' else ('id', 'template')
    if not isinstance(item, dict) or any(key not in item for key in needed):
      raise AnnotationError(path, f'entry {i} lacks {" or ".join(needed)}')
    label = None if split == 'test' else ssv2_template_to_class(item['template'])
    entries.append(VideoEntry(str(item['id']), root / SSV2_VIDEOS / f"{item['id']}.webm", label))
  return unique(entries, path)


# --- SSv1 and Jester: csv + frame folders --------------------------------------------------

FRAME_LAYOUTS = {
    'ssv1': ('something-something-v1', '20bn-something-something-v1'),
    'jester': ('jester-v1', '20bn-jester-v1'),
}


def read_frames_classes(manual_dir, layout: str) -> list[str]:
  """Class names of the SSv1 / Jester labels csv; the index is the position in sorted order."""
  prefix, _ = FRAME_LAYOUTS[layout]
  path = pathlib.Path(manual_dir) / f'{prefix}-labels.csv'
  if not path.exists():
    raise AnnotationError(path, 'file not found')
  names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
  if not names or any(';' in n for n in names):
    raise AnnotationError(path, 'expected one class name per line')
  return sorted(names)


def read_frames_split(manual_dir, layout: str, split: str) -> list[VideoEntry]:
  """Entries of `<prefix>-<split>.csv`: lines `<id>;<class name>` (ids only for test)."""
  prefix, videos = FRAME_LAYOUTS[layout]
  root = pathlib.Path(manual_dir)
  path = root / f'{prefix}-{split}.csv'
  if not path.exists():
    raise AnnotationError(path, 'file not found')
  entries = []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.strip().split(';')
    if split != 'test' and len(parts) != 2:
      raise AnnotationError(path, f'line {number} is not "<id>;<class name>": {line!r}')
    label = parts[1] if len(parts) > 1 else None
    entries.append(VideoEntry(parts[0], root / videos / parts[0], label))
  return unique(entries, path)


# --- Generic: <class>/<video> folders or a path,label csv ----------------------------------

VIDEO_SUFFIXES = ('.webm', '.mp4', '.avi', '.mkv', '.mov', '.m4v')
# A first line of a `path,label` csv that names its columns.
CSV_HEADERS = [['path', 'label'], ['video', 'label'], ['path', 'class'], ['video', 'class'],
               ['file', 'label']]


def read_folder_dataset(manual_dir, split_csv: str | None = None) -> list[VideoEntry]:
  """Videos under `<class>/<video>` (files or frame folders), or listed in a `path,label` csv."""
  root = pathlib.Path(manual_dir)
  entries = []
  if split_csv:
    path = root / split_csv
    if not path.exists():
      raise AnnotationError(path, 'file not found')
    with open(path, newline='') as f:
      for number, row in enumerate(csv.reader(f), 1):
        if number == 1 and [c.strip().lower() for c in row] in CSV_HEADERS:
          continue
        if len(row) != 2:
          raise AnnotationError(path, f'line {number} is not "path,label": {row!r}')
        video = root / row[0]
        entries.append(VideoEntry(str(pathlib.Path(row[0]).with_suffix('')), video, row[1]))
    return unique(entries, path)
  for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
    for video in sorted(class_dir.iterdir()):
      if video.is_dir() or video.suffix.lower() in VIDEO_SUFFIXES:
        entries.append(VideoEntry(f'{class_dir.name}/{video.stem}', video, class_dir.name))
  return unique(entries, root)


# --- Horizontal flip -----------------------------------------------------------------------

_MIRROR_WORDS = {'left': 'right', 'right': 'left', 'clockwise': 'counterclockwise',
                 'counterclockwise': 'clockwise', 'Left': 'Right', 'Right': 'Left'}
_MIRROR_RE = re.compile(r'\b(' + '|'.join(_MIRROR_WORDS) + r')\b')


def mirror_text(name: str) -> str:
  """The class text seen in a mirror: left <-> right, clockwise <-> counterclockwise."""
  return _MIRROR_RE.sub(lambda m: _MIRROR_WORDS[m.group(1)], name)


def flip_label_map(class_names: list[str]) -> list[int]:
  """Label after a horizontal flip, for every label: pairs found from the text swap places
  ('... from left to right' <-> '... from right to left', 'Turning the camera left ...' <->
  'Turning the camera right ...'); every other class keeps its label."""
  index = {name: i for i, name in enumerate(class_names)}
  return [index.get(mirror_text(name), i) for i, name in enumerate(class_names)]
