"""Image grids with their captions, as uint8 arrays and PNG files.

Needs only numpy and Pillow (no TensorFlow), so sampling on a Colab TPU
runtime can write grids too.
"""

import io
import os
import textwrap
from typing import Optional, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont


def to_uint8(images) -> np.ndarray:
  """[0, 1] float images -> uint8, rounding as image files do."""
  return np.clip(np.round(np.asarray(images, np.float32) * 255), 0,
                 255).astype(np.uint8)


def make_grid(images: np.ndarray, captions: Optional[Sequence[str]] = None,
              columns: int = 4, caption_lines: int = 6,
              min_tile: int = 192) -> np.ndarray:
  """Tiles images (N, H, W, 3) uint8 into a grid, captions under each tile.

  Args:
    images: uint8 images.
    captions: one per image (bytes or str), or None for no text.
    columns: tiles per row.
    caption_lines: text lines kept per caption (wrapped, then cut).
    min_tile: small images are enlarged (nearest) to at least this width so
      their captions fit under them.

  Returns:
    (rows * tile_h, columns * W, 3) uint8.
  """
  images = np.asarray(images)
  scale = -(-min_tile // images.shape[2])
  if scale > 1:
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, _ = images.shape
  columns = max(1, min(columns, n))
  rows = -(-n // columns)
  font = ImageFont.load_default()
  line_height = 12
  text_h = caption_lines * line_height + 4 if captions is not None else 0
  chars = max(8, w // 6)
  gap = 6  # White space between tiles.
  w, h = w + gap, h + gap
  canvas = Image.new('RGB', (columns * w, rows * (h + text_h)), 'white')
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    x, y = (i % columns) * w, (i // columns) * (h + text_h)
    canvas.paste(Image.fromarray(images[i]), (x, y))
    if captions is not None:
      caption = captions[i]
      if isinstance(caption, bytes):
        caption = caption.decode('utf-8', 'replace')
      lines = textwrap.wrap(caption, chars)[:caption_lines]
      for k, line in enumerate(lines):
        draw.text((x + 2, y + h + 2 + k * line_height), line, fill='black',
                  font=font)
  return np.asarray(canvas)


def png_bytes(image: np.ndarray) -> bytes:
  """PNG encoding of an (H, W, 3) uint8 image."""
  out = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(out, 'PNG')
  return out.getvalue()


def save_png(path: str, image: np.ndarray) -> None:
  """Writes a PNG; gs:// and other remote paths go through tf.io.gfile."""
  data = png_bytes(image)
  if '://' in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, 'wb') as f:
      f.write(data)
    return
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)
