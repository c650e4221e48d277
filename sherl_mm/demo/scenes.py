"""Square emoji scenes: what the retrieval and VQA demos picture.

A scene holds 1 to 4 emoji in the cells of a 3 x 3 grid over a solid colour
(with a little noise) or a square photo crop, so that every caption or
answer about it (names, counts, colours, positions, relations) is a fact of
the image. :mod:`.retrieval` writes captions of them, :mod:`.vqa` questions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .render import GRID, GridEmoji, article, paste, photo_crop, place_emoji, render_emoji, sample_cells

#: skimage loaders usable offline and a short noun phrase for each (the
#: docstring's first line is the long description)
PHOTOS: dict[str, str] = {
    'astronaut': 'an astronaut', 'chelsea': 'a cat', 'coffee': 'a cup of coffee', 'rocket': 'a rocket launch',
    'horse': 'a horse silhouette', 'camera': 'a cameraman', 'coins': 'old coins', 'moon': 'the moon surface',
    'page': 'a scanned page', 'text': 'printed text', 'clock': 'a clock', 'hubble_deep_field': 'galaxies',
    'immunohistochemistry': 'stained tissue', 'retina': 'a retina', 'brick': 'a brick wall', 'grass': 'grass',
    'gravel': 'gravel', 'colorwheel': 'a colour wheel', 'logo': 'a logo', 'checkerboard': 'a checkerboard',
    'shepp_logan_phantom': 'a phantom scan', 'cell': 'a cell',
}
#: backgrounds of the composited scenes: photos that make a plausible texture
SCENE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'moon', 'brick', 'grass', 'gravel', 'coins',
                'hubble_deep_field', 'page', 'camera')

#: named colours of the solid backgrounds
COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (210, 45, 40), 'orange': (235, 125, 30), 'yellow': (225, 205, 40), 'green': (80, 165, 60),
    'blue': (60, 110, 205), 'purple': (125, 80, 160), 'pink': (235, 140, 180), 'brown': (130, 85, 45),
    'white': (245, 245, 245), 'gray': (128, 128, 128), 'black': (20, 20, 20),
}
BACKGROUND_COLOURS = ('red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'white', 'gray', 'black')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten')
#: glyph's longer side / grid cell
SIZE_FRACTION = {'big': 0.9, 'small': 0.6}
#: the random square photo crop's side is the photo's shorter side times U(this, 1)
PHOTO_MIN_SCALE = 0.6


@dataclass
class Scene:
    """A square scene: its background and its emoji (sorted by row, then column)."""

    background: str          # colour name or photo name
    background_kind: str     # 'colour' | 'photo'
    objects: list[GridEmoji] = field(default_factory=list)

    @property
    def background_phrase(self) -> str:
        if self.background_kind == 'colour':
            return f'{article(self.background)} background'
        return f'a photo of {PHOTOS[self.background]}'


def sample_scene(rng: np.random.Generator, emoji: Sequence[int], num_objects: int, distinct: bool = True,
                 photo_background_prob: float = 0.4) -> Scene:
    """``num_objects`` emoji of the ``emoji`` kinds (all different kinds when
    ``distinct``) in random cells, over a photo (probability
    ``photo_background_prob``) or a solid colour."""
    if rng.random() < photo_background_prob:
        scene = Scene(str(rng.choice(SCENE_PHOTOS)), 'photo')
    else:
        scene = Scene(str(rng.choice(BACKGROUND_COLOURS)), 'colour')
    cells = sample_cells(rng, num_objects)
    kinds = rng.permutation(len(emoji))[:num_objects] if distinct else rng.integers(0, len(emoji), num_objects)
    scene.objects = place_emoji(rng, [emoji[int(k)] for k in kinds], cells)
    scene.objects.sort(key=lambda o: (o.row, o.col))
    return scene


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator):
    """Composite the scene on an ``image_size`` square; fills each object's
    ``box``. Each glyph sits near its cell's centre, offset at random by up
    to half its free room. Returns an RGB Pillow image."""
    from PIL import Image
    if scene.background_kind == 'colour':
        base = np.empty((image_size, image_size, 3), np.float32)
        base[:] = COLOURS[scene.background]
        base += rng.normal(0, 6, base.shape)  # a little texture
        canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert('RGBA')
    else:
        canvas = photo_crop(scene.background, image_size, image_size, rng, min_scale=PHOTO_MIN_SCALE).convert('RGBA')
    cell = image_size / GRID
    for obj in scene.objects:
        glyph = render_emoji(obj.codepoint, int(round(cell * SIZE_FRACTION[obj.size])))
        room = max(0, int(cell - max(glyph.size)) // 2)
        cx = int(cell * (obj.col + 0.5)) + int(rng.integers(-room, room + 1)) // 2
        cy = int(cell * (obj.row + 0.5)) + int(rng.integers(-room, room + 1)) // 2
        paste(canvas, obj, glyph, cx - glyph.width // 2, cy - glyph.height // 2)
    return canvas.convert('RGB')


__all__ = ['BACKGROUND_COLOURS', 'COLOURS', 'NUMBER_WORDS', 'PHOTOS', 'SCENE_PHOTOS', 'Scene', 'render_scene',
           'sample_scene']
