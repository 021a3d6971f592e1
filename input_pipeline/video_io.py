"""Reading videos (PyAV) and frame folders (OpenCV), and JPEG coding of frames.

Frames are RGB uint8 `[H, W, 3]`. Every failure is a `VideoError` that names the file. PyAV is
imported by the two functions that code video files, so frame folders and prepared datasets
work on hosts without it (a GPU host's own image, say).
"""
import pathlib

import cv2
import numpy as np

JPEG_QUALITY = 90


class VideoError(Exception):
  """A video or frame folder that cannot be read; the message says why."""


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
  """Resizes so min(H, W) == short_side (area filter when shrinking); 0 keeps the frame."""
  h, w = frame.shape[:2]
  if not short_side or min(h, w) == short_side:
    return frame
  scale = short_side / min(h, w)
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  return cv2.resize(frame, size, interpolation=interpolation)


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
  ok, data = cv2.imencode('.jpg', cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                          [cv2.IMWRITE_JPEG_QUALITY, quality])
  if not ok:
    raise VideoError('JPEG encoding failed')
  return data.tobytes()


def decode_jpeg(data: bytes, where: str = 'frame') -> np.ndarray:
  """JPEG bytes -> RGB uint8 `[H, W, 3]`."""
  frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)  # no BGR copy
  if frame is None:
    raise VideoError(f'corrupt JPEG {where}')
  return frame


def frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in ('.jpg', '.jpeg'))


def decode_video(path: pathlib.Path, each_frame=None) -> list:
  """All frames of a video file (webm/VP9, mp4, ...) as RGB arrays, or `each_frame(frame)` of
  each as it is decoded (so a long high-resolution video never has all its full-size frames in
  memory at once).

  A file that decodes to clearly fewer frames than its header's duration promises (a truncated
  download) is an error, not a short video.
  """
  import av
  each_frame = each_frame or (lambda frame: frame)
  if pathlib.Path(path).stat().st_size == 0:
    raise VideoError('empty file (0 bytes)')
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise VideoError('no video stream')
      stream = container.streams.video[0]
      frames = [each_frame(f.to_ndarray(format='rgb24')) for f in container.decode(stream)]
      duration, rate = container.duration, stream.average_rate
  except av.error.FFmpegError as e:  # unreadable or not a video
    raise VideoError(f'cannot decode video ({type(e).__name__}: {e})') from e
  if not frames:
    raise VideoError('no decodable frames')
  if duration and rate:
    expected = round(duration / av.time_base * float(rate))
    if len(frames) < expected - max(1, 0.05 * expected):
      raise VideoError(f'truncated: {len(frames)} of {expected} frames decode')
  return frames


def video_to_jpegs(path, short_side: int = 256, quality: int = JPEG_QUALITY) -> list[bytes]:
  """Every frame of a video file or JPEG frame folder as JPEG bytes, short side resized.

  Folder frames that need no resizing are kept byte for byte (after a check that they decode).
  """
  path = pathlib.Path(path)
  if not path.exists():
    raise VideoError('missing file' if path.suffix else 'missing file or frame folder')
  if path.is_dir():
    files = frame_files(path)
    if not files:
      raise VideoError('empty frame folder')
    out = []
    for f in files:
      data = f.read_bytes()
      frame = decode_jpeg(data, f.name)
      out.append(data if not short_side or min(frame.shape[:2]) == short_side else
                 encode_jpeg(resize_short_side(frame, short_side), quality))
    return out
  return decode_video(path, lambda f: encode_jpeg(resize_short_side(f, short_side), quality))


def write_webm(path, frames, fps: int = 12, crf: int = 30) -> None:
  """Writes RGB frames as a VP9 WebM (even width and height required by yuv420p); a lower
  `crf` keeps more detail in larger files."""
  import av
  height, width = frames[0].shape[:2]
  with av.open(str(path), 'w') as container:
    stream = container.add_stream('libvpx-vp9', rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, 'yuv420p'
    stream.options = {'deadline': 'realtime', 'cpu-used': '8', 'crf': str(crf), 'b': '0'}
    for frame in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format='rgb24')):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
