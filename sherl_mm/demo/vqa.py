"""VQA demo data in the VQAv2 format, from package-shipped images.

:func:`build_vqa_demo` writes questions and annotations about square emoji
scenes (:mod:`.scenes`): counting, colour, existence and position questions,
10 answers per question with the variation real annotators show (a few
wrong answers, articles, number words), the images, and
``answer_vocab.json``. Read it with :class:`~sherl_mm.datasets.VQAv2Dataset`.
Deterministic given ``seed``; images of ``image_size`` pixels (128 by
default), so that CPU training takes minutes.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Sequence

import numpy as np

from sherl_mm.datasets.vqa import build_answer_vocab, save_answer_vocab

from .render import ATTRIBUTION, COL_NAMES, ROW_NAMES, article, emoji_colour, emoji_name, relation, write_json
from .scenes import BACKGROUND_COLOURS, NUMBER_WORDS, Scene, render_scene, sample_scene

#: few kinds, so that counts and relations are learnable from a few hundred
#: images; the coloured circles carry the colour questions
VQA_EMOJI = (0x1F436, 0x1F431, 0x1F34C, 0x1F697, 0x1F41F, 0x1F534, 0x1F535, 0x1F7E2, 0x1F7E1, 0x1F7E3)
_IRREGULAR_PLURALS = {'fish': 'fish', 'mouse face': 'mouse faces', 'honeybee': 'honeybees', 'cherries': 'cherries',
                      'grapes': 'grapes'}


def plural(name: str) -> str:
    if name in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[name]
    if name.endswith(('s', 'sh', 'ch', 'x')):
        return name + 'es'
    if name.endswith('y') and name[-2:-1] not in 'aeiou':
        return name[:-1] + 'ies'
    return name + 's'


def is_circle(codepoint: int) -> bool:
    name = emoji_name(codepoint)
    return name.startswith('large ') and name.endswith(' circle')


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
        write_json(dict(info=info, task_type='Open-Ended', data_type='mscoco', data_subtype=subtype,
                         questions=questions), qpath)
        write_json(dict(info=info, data_type='mscoco', data_subtype=subtype, annotations=annotations), apath)
        paths[f'{split}_questions'], paths[f'{split}_annotations'] = qpath, apath
    vocab_path = osp.join(out_dir, 'answer_vocab.json')
    save_answer_vocab(build_answer_vocab(paths['train_annotations'], min_answer_count), vocab_path)
    paths['answer_vocab'] = vocab_path
    return paths


__all__ = ['VQA_EMOJI', 'build_vqa_demo', 'plural', 'scene_questions']
