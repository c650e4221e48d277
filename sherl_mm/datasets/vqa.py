"""VQAv2 (and GQA) readers.

VQAv2 comes as two files per split::

    v2_OpenEnded_mscoco_train2014_questions.json
        {"data_subtype": "train2014",
         "questions": [{"image_id": 458752, "question": "What is this photo taken looking through?",
                        "question_id": 458752000}, ...]}
    v2_mscoco_train2014_annotations.json
        {"annotations": [{"question_id": 458752000, "image_id": 458752, "question_type": "what is this",
                          "answer_type": "other", "multiple_choice_answer": "net",
                          "answers": [{"answer": "net", "answer_confidence": "maybe", "answer_id": 1},
                                      ... 10 answers ...]}, ...]}

and images ``COCO_{data_subtype}_{image_id:012d}.jpg`` under
``data_prefix['img_path']``. Test splits have no annotation file
(``ann_file=''``); their samples carry no targets.

Training targets follow the standard VQA pipelines (bottom-up attention,
LXMERT, CLIP-ViL): answers are normalised with the official evaluation's
normalisation (:func:`sherl_mm.evaluation.vqa.normalize_answer`, plus comma
removal), the answer vocabulary holds the normalised
``multiple_choice_answer`` values seen at least ``min_answer_count`` times
(9 gives the usual ~3.1K answers on train+val), and each vocabulary answer
given by ``n`` of the 10 humans gets the soft score

* ``soft_score='official'`` (default): ``0, 0.3, 0.6, 0.9, 1`` for ``n = 0, 1, 2,
  3, >= 4``, which is exactly the official accuracy of predicting that answer
  (the mean over the 10 leave-one-out subsets of 9 humans of
  ``min(#matches/3, 1)``); these are the targets CLIP-ViL/LXMERT train on;
* ``soft_score='min3'``: ``min(n/3, 1)``, the simplified form of the formula.
"""
from __future__ import annotations

import os
import os.path as osp
from collections import Counter
from typing import Any, Sequence

from mmengine.dataset import BaseDataset
from mmengine.logging import MMLogger

from sherl_mm.evaluation.vqa import normalize_answer
from sherl_mm.registry import DATASETS

from .karpathy import AnnotationError, load_json


def answer_key(answer: str) -> str:
    """The normalised form answers are counted and classified by."""
    return normalize_answer(answer).replace(',', '')


def soft_score(count: int, kind: str = 'official', total: int = 10) -> float:
    """Target score of an answer given by ``count`` of ``total`` humans."""
    if kind == 'official':
        if count <= 0:
            return 0.0
        # mean over the `total` leave-one-out subsets of min(matches / 3, 1):
        # leaving out one of the `count` matching humans leaves count - 1 matches
        return (count * min(1.0, (count - 1) / 3.0) + (total - count) * min(1.0, count / 3.0)) / total
    if kind == 'min3':
        return min(1.0, count / 3.0)
    raise ValueError(f"soft_score must be 'official' or 'min3', got {kind!r}")


def build_answer_vocab(ann_files: str | Sequence[str], min_count: int = 9) -> list[str]:
    """Answers (normalised ``multiple_choice_answer``) seen at least
    ``min_count`` times in the given VQAv2 annotation files, most frequent
    first (ties alphabetical), so the vocabulary is deterministic."""
    counts: Counter = Counter()
    for path in ([ann_files] if isinstance(ann_files, str) else ann_files):
        raw = load_json(path, 'VQA annotation file')
        if not isinstance(raw, dict) or 'annotations' not in raw:
            raise AnnotationError(f'{path}: expected a JSON object with an "annotations" list (VQAv2 format)')
        for i, ann in enumerate(raw['annotations']):
            if 'multiple_choice_answer' not in ann:
                raise AnnotationError(f'{path}: annotations[{i}] (question_id {ann.get("question_id")}) '
                                      "has no key 'multiple_choice_answer'")
            counts[answer_key(ann['multiple_choice_answer'])] += 1
    return [a for a, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count and a]


def load_answer_vocab(path: str) -> list[str]:
    """Read a vocabulary: a JSON list of answers, or an ``{answer: label}``
    dict (LXMERT/CLIP-ViL's ``trainval_ans2label.json``)."""
    vocab = load_json(path, 'answer vocabulary file')
    if isinstance(vocab, dict):
        labels = sorted(vocab.items(), key=lambda kv: kv[1])
        if [v for _, v in labels] != list(range(len(labels))):
            raise AnnotationError(f'{path}: the answer -> label dict must use the labels 0..{len(labels) - 1}')
        return [a for a, _ in labels]
    if isinstance(vocab, list) and all(isinstance(a, str) for a in vocab):
        return vocab
    raise AnnotationError(f'{path}: expected a JSON list of answers or an answer -> label dict')


def save_answer_vocab(vocab: list[str], path: str) -> None:
    import json
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(vocab, f)
    os.replace(tmp, path)


def resolve_answer_vocab(answer_vocab: str | None, vocab_ann_files: str | Sequence[str] | None,
                         min_answer_count: int) -> list[str]:
    """Load ``answer_vocab`` if the file exists, else build it from
    ``vocab_ann_files`` (and write it to ``answer_vocab`` when given)."""
    if answer_vocab and osp.isfile(answer_vocab):
        return load_answer_vocab(answer_vocab)
    if not vocab_ann_files:
        raise FileNotFoundError(f'answer vocabulary file not found: {answer_vocab}; give vocab_ann_file '
                                '(the training annotations) to build it')
    vocab = build_answer_vocab(vocab_ann_files, min_answer_count)
    if answer_vocab:
        save_answer_vocab(vocab, answer_vocab)
        MMLogger.get_current_instance().info(f'answer vocabulary of {len(vocab)} answers written to {answer_vocab}')
    return vocab


@DATASETS.register_module()
class VQAv2Dataset(BaseDataset):
    """VQAv2 questions with their 10 human answers.

    Args:
        ann_file: the annotations JSON ('' for test splits without answers).
        question_file: the questions JSON.
        answer_vocab: path of the answer vocabulary (JSON list, or an
            ``{answer: label}`` dict). If the file does not exist, it is
            built from ``vocab_ann_file`` and written there.
        vocab_ann_file: annotation file(s) the vocabulary is built from
            (default: ``ann_file``; give the training annotations for
            validation sets).
        min_answer_count: vocabulary threshold (9 in the standard pipelines).
        soft_score: 'official' or 'min3' (module docstring).
        answers_per_question: the number of human answers each annotation
            must have (10 for VQAv2); ``None`` accepts any number.
        img_name_template: image file name; ``{data_subtype}`` comes from the
            questions file (or ``data_subtype``), ``{image_id}`` from the record.
        drop_unanswerable: drop training questions none of whose answers is
            in the vocabulary (the standard pipelines keep them).
        max_questions: keep only the first N questions (quick runs).
        check_images: check that every image file exists while loading.
    """

    METAINFO = dict(dataset_name='vqav2')

    def __init__(self, question_file: str, ann_file: str = '', answer_vocab: str | None = None,
                 vocab_ann_file: str | Sequence[str] | None = None, min_answer_count: int = 9,
                 soft_score: str = 'official', answers_per_question: int | None = 10,
                 img_name_template: str = 'COCO_{data_subtype}_{image_id:012d}.jpg', data_subtype: str | None = None,
                 drop_unanswerable: bool = False, max_questions: int | None = None, check_images: bool = True,
                 **kwargs: Any) -> None:
        if soft_score not in ('official', 'min3'):
            raise ValueError(f"VQAv2Dataset: soft_score must be 'official' or 'min3', got {soft_score!r}")
        self.question_file = question_file
        self.answer_vocab_file = answer_vocab
        self.vocab_ann_file = vocab_ann_file
        self.min_answer_count = min_answer_count
        self.soft_score_kind = soft_score
        self.answers_per_question = answers_per_question
        self.img_name_template = img_name_template
        self.data_subtype = data_subtype
        self.drop_unanswerable = drop_unanswerable
        self.max_questions = max_questions
        self.check_images = check_images
        kwargs.setdefault('data_prefix', dict(img_path=''))
        super().__init__(ann_file=ann_file, **kwargs)

    def _join_prefix(self) -> None:
        super()._join_prefix()
        root = self.data_root or ''
        for name in ('question_file', 'answer_vocab_file'):
            value = getattr(self, name)
            if value and not osp.isabs(value):
                setattr(self, name, osp.join(root, value))
        if self.vocab_ann_file:
            files = [self.vocab_ann_file] if isinstance(self.vocab_ann_file, str) else list(self.vocab_ann_file)
            self.vocab_ann_file = [f if osp.isabs(f) else osp.join(root, f) for f in files]

    def load_data_list(self) -> list[dict]:
        raw_q = load_json(self.question_file, 'VQA question file')
        if not isinstance(raw_q, dict) or 'questions' not in raw_q:
            raise AnnotationError(f'{self.question_file}: expected a JSON object with a "questions" list '
                                  '(VQAv2 format)')
        subtype = self.data_subtype or raw_q.get('data_subtype')
        annotations: dict[int, dict] = {}
        if self.ann_file:
            raw_a = load_json(self.ann_file, 'VQA annotation file')
            if not isinstance(raw_a, dict) or 'annotations' not in raw_a:
                raise AnnotationError(f'{self.ann_file}: expected a JSON object with an "annotations" list '
                                      '(VQAv2 format)')
            for i, ann in enumerate(raw_a['annotations']):
                where = f'{self.ann_file}: annotations[{i}]'
                for key in ('question_id', 'answers'):
                    if key not in ann:
                        raise AnnotationError(f'{where} has no key {key!r}')
                where += f' (question_id {ann["question_id"]})'
                answers = ann['answers']
                if not isinstance(answers, list) or \
                        (self.answers_per_question is not None and len(answers) != self.answers_per_question):
                    n = len(answers) if isinstance(answers, list) else type(answers).__name__
                    raise AnnotationError(f'{where} has {n} answers, expected {self.answers_per_question}')
                for j, a in enumerate(answers):
                    if not isinstance(a, dict) or 'answer' not in a:
                        raise AnnotationError(f"{where}: answers[{j}] has no key 'answer'")
                annotations[ann['question_id']] = ann
        vocab_sources = self.vocab_ann_file or ([self.ann_file] if self.ann_file else None)
        self.answers = resolve_answer_vocab(self.answer_vocab_file, vocab_sources, self.min_answer_count)
        self.answer_to_label = {a: i for i, a in enumerate(self.answers)}
        self._metainfo['answers'] = self.answers

        img_root = self.data_prefix.get('img_path', '') or ''
        data_list = []
        for i, q in enumerate(raw_q['questions']):
            where = f'{self.question_file}: questions[{i}]'
            for key in ('question_id', 'image_id', 'question'):
                if key not in q:
                    raise AnnotationError(f'{where} has no key {key!r}')
            qid = q['question_id']
            try:
                name = self.img_name_template.format(data_subtype=subtype, image_id=q['image_id'])
            except (KeyError, ValueError) as exc:
                raise AnnotationError(f'{where} (question_id {qid}): cannot build the image file name from '
                                      f'{self.img_name_template!r} ({exc}); set data_subtype') from exc
            info = dict(img_path=osp.join(img_root, name), img_id=q['image_id'], question_id=qid,
                        question=str(q['question']))
            if annotations:
                ann = annotations.get(qid)
                if ann is None:
                    raise AnnotationError(f'{self.ann_file}: no annotation for question_id {qid} '
                                          f'({where} in the question file)')
                gt = [str(a['answer']) for a in ann['answers']]
                counts = Counter(answer_key(a) for a in gt)
                labels = [self.answer_to_label[a] for a in sorted(counts) if a in self.answer_to_label]
                scores = [soft_score(counts[self.answers[lab]], self.soft_score_kind, len(gt)) for lab in labels]
                if self.drop_unanswerable and not self.test_mode and not labels:
                    continue
                info.update(gt_answers=gt, answer_labels=labels, answer_scores=scores,
                            answer_type=ann.get('answer_type', 'all'), question_type=ann.get('question_type', ''))
            data_list.append(info)
            if self.max_questions is not None and len(data_list) >= self.max_questions:
                break
        if self.check_images:
            seen: set[str] = set()
            for info in data_list:
                if info['img_path'] not in seen:
                    if not osp.isfile(info['img_path']):
                        raise FileNotFoundError(f'{self.question_file}: question_id {info["question_id"]}: '
                                                f'image file not found: {info["img_path"]}')
                    seen.add(info['img_path'])
        return data_list


@DATASETS.register_module()
class GQADataset(BaseDataset):
    """GQA balanced questions (``{qid: {imageId, question, answer, ...}}``),
    one answer per question (exact-match accuracy, :class:`VQAExactMatch`).

    The answer vocabulary is every normalised answer of ``vocab_ann_file``
    (the training questions) seen ``min_answer_count`` times, or the given
    ``answer_vocab`` file. Targets are one-hot (score 1).
    """

    METAINFO = dict(dataset_name='gqa')

    def __init__(self, ann_file: str, answer_vocab: str | None = None, vocab_ann_file: str | None = None,
                 min_answer_count: int = 1, max_questions: int | None = None, check_images: bool = True,
                 **kwargs: Any) -> None:
        self.answer_vocab_file = answer_vocab
        self.vocab_ann_file = vocab_ann_file
        self.min_answer_count = min_answer_count
        self.max_questions = max_questions
        self.check_images = check_images
        kwargs.setdefault('data_prefix', dict(img_path=''))
        super().__init__(ann_file=ann_file, **kwargs)

    def _join_prefix(self) -> None:
        super()._join_prefix()
        root = self.data_root or ''
        for name in ('answer_vocab_file', 'vocab_ann_file'):
            value = getattr(self, name)
            if value and not osp.isabs(value):
                setattr(self, name, osp.join(root, value))

    @staticmethod
    def _read(path: str) -> dict:
        raw = load_json(path, 'GQA question file')
        if not isinstance(raw, dict):
            raise AnnotationError(f'{path}: expected a JSON object {{question_id: record}} (GQA format)')
        return raw

    def load_data_list(self) -> list[dict]:
        raw = self._read(self.ann_file)
        if self.answer_vocab_file and osp.isfile(self.answer_vocab_file):
            self.answers = load_answer_vocab(self.answer_vocab_file)
        else:
            source = self._read(self.vocab_ann_file) if self.vocab_ann_file else raw
            counts = Counter(answer_key(str(r.get('answer', ''))) for r in source.values() if 'answer' in r)
            self.answers = [a for a, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                            if c >= self.min_answer_count and a]
            if self.answer_vocab_file:
                save_answer_vocab(self.answers, self.answer_vocab_file)
        label_of = {a: i for i, a in enumerate(self.answers)}
        self._metainfo['answers'] = self.answers
        img_root = self.data_prefix.get('img_path', '') or ''
        data_list = []
        for qid, rec in raw.items():
            for key in ('imageId', 'question'):
                if key not in rec:
                    raise AnnotationError(f'{self.ann_file}: question {qid!r} has no key {key!r}')
            info = dict(img_path=osp.join(img_root, f'{rec["imageId"]}.jpg'), img_id=rec['imageId'],
                        question_id=qid, question=str(rec['question']))
            if 'answer' in rec:
                key = answer_key(str(rec['answer']))
                info.update(gt_answers=[str(rec['answer'])], answer_type=rec.get('types', {}).get('structural', 'all'),
                            answer_labels=[label_of[key]] if key in label_of else [],
                            answer_scores=[1.0] if key in label_of else [])
            data_list.append(info)
            if self.max_questions is not None and len(data_list) >= self.max_questions:
                break
        if self.check_images:
            for info in data_list:
                if not osp.isfile(info['img_path']):
                    raise FileNotFoundError(f'{self.ann_file}: question {info["question_id"]!r}: '
                                            f'image file not found: {info["img_path"]}')
        return data_list


__all__ = ['GQADataset', 'VQAv2Dataset', 'answer_key', 'build_answer_vocab', 'load_answer_vocab',
           'resolve_answer_vocab', 'save_answer_vocab', 'soft_score']
