"""Image-text retrieval demo data in Karpathy's format, from package-shipped images.

:func:`build_retrieval_demo` writes ``dataset_demo.json`` (5 captions per
image) and the images: scikit-image's photos, captioned with paraphrases of
their one-line descriptions (the first line of each loader's docstring), in
the training split, and square emoji scenes (:mod:`.scenes`) with generated
captions in every split. Read it with
:class:`~sherl_mm.datasets.KarpathyRetrievalDataset`. Deterministic given
``seed``; images of ``image_size`` pixels (128 by default), so that CPU
training takes minutes.
"""
from __future__ import annotations

import os
import os.path as osp
from functools import lru_cache

import numpy as np

from .render import ATTRIBUTION, article, photo_crop, relation, write_json
from .scenes import NUMBER_WORDS, PHOTOS, Scene, render_scene, sample_scene

#: emoji of the retrieval scenes (single code points with a Unicode name that describes them)
RETRIEVAL_EMOJI = (0x1F436, 0x1F431, 0x1F34E, 0x1F34F, 0x1F34C, 0x1F697, 0x1F680, 0x1F333, 0x1F41F, 0x1F438,
                   0x1F437, 0x1F42D, 0x1F34A, 0x1F350, 0x1F353, 0x1F6B2, 0x2708, 0x1F3E0, 0x26BD, 0x1F388,
                   0x1F381, 0x1F514, 0x1F511, 0x1F419, 0x1F422, 0x1F98B, 0x1F41D, 0x1F335, 0x1F955, 0x1F966,
                   0x1F34D, 0x1F6A2, 0x1F451, 0x1F48E)


@lru_cache(maxsize=None)
def photo_description(name: str) -> str:
    """First line of the skimage loader's docstring ("Coffee cup.")."""
    import skimage.data
    doc = (getattr(skimage.data, name).__doc__ or '').strip().splitlines()
    return doc[0].strip() if doc else name


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
            photo_crop(name, image_size, image_size).save(osp.join(out_dir, 'images', filename), quality=90)
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
    write_json(dict(dataset='sherl_mm_retrieval_demo', attribution=ATTRIBUTION, seed=seed, images=images), path)
    return path


__all__ = ['RETRIEVAL_EMOJI', 'build_retrieval_demo', 'photo_captions', 'photo_description', 'scene_captions']
