"""VQA accuracy as the official VQA evaluation computes it.

The official tool (GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/
vqaEval.py``) scores a predicted answer against the 10 human answers as the
mean, over the 10 leave-one-out subsets of 9 answers, of
``min(#matches in the subset / 3, 1)``. Before matching it

* replaces newlines and tabs with spaces and strips the predicted answer, then
  applies *punctuation* and *digit/article* normalisation to it;
* applies *punctuation* normalisation (only) to the human answers, and only
  when they are not all identical.

Punctuation normalisation removes (or, when the punctuation mark is glued to
a word and no "digit,digit" occurs in the string, replaces with a space) the
characters ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` and deletes periods
not followed by a digit (the official regex, applied to at most 32 matches
because the official code passes ``re.UNICODE`` as the ``count`` argument).
Digit/article normalisation lower-cases, maps number words ``none/zero ... ten``
to digits, drops the articles ``a an the`` and restores apostrophes in common
contractions (``dont`` → ``don't``).

``mode='official'`` reproduces that tool exactly (it is the default);
``mode='normalize_all'`` normalises every human answer fully as well, as many
re-implementations do (the EvalAI server's processor is close to it).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Any, Sequence

from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger

from sherl_mm.registry import METRICS

_PUNCT = (';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!')
# The official patterns, kept character for character: "(?!<=\d)" is a
# negative look-ahead (a typo for a look-behind), so a period is removed
# unless it is followed by a digit.
_PERIOD_STRIP = re.compile(r'(?!<=\d)(\.)(?!\d)')
_COMMA_STRIP = re.compile(r'(\d)(\,)(\d)')
_PERIOD_MAX_SUBS = int(re.UNICODE)  # official code passes re.UNICODE (32) as `count`
_NUMBER_WORDS = {'none': '0', 'zero': '0', 'one': '1', 'two': '2', 'three': '3', 'four': '4', 'five': '5',
                 'six': '6', 'seven': '7', 'eight': '8', 'nine': '9', 'ten': '10'}
_ARTICLES = frozenset(('a', 'an', 'the'))


def _contraction_table() -> dict[str, str]:
    """The official contraction table: a word written without (some of) its
    apostrophes maps to the apostrophised form. Most entries are the form with
    every apostrophe removed; the irregular ones are listed explicitly."""
    regular = ("ain't aren't can't could've couldn't didn't doesn't don't hadn't hasn't haven't he'd he's how'd "
               "how'll how's I'm I've isn't it'd it'll ma'am mightn't might've mustn't must've needn't not've "
               "o'clock oughtn't shan't should've shouldn't somebody'll somebody's someone'd someone'll someone's "
               "something'd something'll that's there'd there're there's they'd they'll they're they've wasn't "
               "we've weren't what'll what're what's what've when's where'd where's where've who'd who'll who's "
               "who've why'll why're why's won't would've wouldn't y'all you'd you'll you're you've").split()
    table = {word.replace("'", ''): word for word in regular}
    # two-apostrophe forms: each spelling with exactly one apostrophe missing maps to the full form
    for full in ("couldn't've hadn't've he'd've I'd've it'd've mightn't've she'd've shouldn't've somebody'd've "
                 "someone'd've something'd've there'd've they'd've we'd've who'd've wouldn't've you'd've").split():
        first = full.index("'")
        second = full.index("'", first + 1)
        table[full[:first] + full[first + 1:]] = full      # "couldnt've"
        table[full[:second] + full[second + 1:]] = full    # "couldn'tve"
    table.update({
        "let's": "let's", "she's": "she's", "twas": "'twas",
        "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
        "somebody'd": 'somebodyd',  # sic: the official table maps it the wrong way round
        "yall'll": "y'all'll", "y'allll": "y'all'll",
        "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    })
    return table


CONTRACTIONS = _contraction_table()


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``."""
    out = text
    glued_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if (p + ' ' in text or ' ' + p in text) or glued_digit_comma:
            out = out.replace(p, '')
        else:
            out = out.replace(p, ' ')
    return _PERIOD_STRIP.sub('', out, count=_PERIOD_MAX_SUBS)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``."""
    words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in _ARTICLES]
    return ' '.join(CONTRACTIONS.get(w, w) for w in words)


def _clean(text: str) -> str:
    return text.replace('\n', ' ').replace('\t', ' ').strip()


def normalize_answer(text: str) -> str:
    """Full normalisation (punctuation, then digits/articles/contractions).

    This is what the official tool applies to predicted answers, and what the
    answer vocabulary of the standard VQA pipelines (bottom-up attention,
    LXMERT, CLIP-ViL) is built with; those pipelines also drop commas.
    """
    return process_digit_article(process_punctuation(_clean(text)))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str], mode: str = 'official') -> float:
    """Accuracy in [0, 1] of one predicted answer against the human answers."""
    if mode not in ('official', 'normalize_all'):
        raise ValueError(f"vqa_accuracy: mode must be 'official' or 'normalize_all', got {mode!r}")
    if len(gt_answers) == 0:
        raise ValueError('vqa_accuracy: no ground-truth answers')
    pred = normalize_answer(prediction)
    gts = [_clean(a) for a in gt_answers]
    if mode == 'normalize_all':
        gts = [normalize_answer(a) for a in gts]
    elif len(set(gts)) > 1:
        gts = [process_punctuation(a) for a in gts]
    matches = [g == pred for g in gts]
    total = sum(matches)
    # leave-one-out over the annotators: an annotator that matched leaves total-1
    accs = [min(1.0, (total - m) / 3.0) for m in matches]
    return sum(accs) / len(accs)


@METRICS.register_module()
class VQAAccuracy(BaseMetric):
    """Official VQA accuracy (in %), overall and per answer type.

    Each data sample given to :meth:`process` must carry ``pred_answer`` (a
    string) and ``gt_answers`` (the human answers; evaluation is skipped for
    samples without them, e.g. test-dev) and optionally ``answer_type`` and
    ``question_id``.

    Args:
        mode: 'official' (GT-Vision-Lab tool, default) or 'normalize_all'.
        by_answer_type: also report accuracy per answer type.
        result_file: optional JSON path where ``[{question_id, answer}]`` is
            written, the format the evaluation server takes.
    """

    default_prefix = 'vqa'

    def __init__(self, mode: str = 'official', by_answer_type: bool = True, result_file: str | None = None,
                 collect_device: str = 'cpu', prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        if mode not in ('official', 'normalize_all'):
            raise ValueError(f"VQAAccuracy: mode must be 'official' or 'normalize_all', got {mode!r}")
        self.mode = mode
        self.by_answer_type = by_answer_type
        self.result_file = result_file

    def process(self, data_batch: Any, data_samples: Sequence) -> None:
        for sample in data_samples:
            get = sample.get if isinstance(sample, dict) else (lambda k, d=None, s=sample: getattr(s, k, d))
            pred = get('pred_answer')
            if pred is None:
                raise KeyError('VQAAccuracy: a data sample has no pred_answer; the model must set it in predict mode')
            gts = get('gt_answers')
            self.results.append(dict(question_id=get('question_id'), answer=str(pred),
                                     acc=None if not gts else vqa_accuracy(str(pred), list(gts), self.mode),
                                     answer_type=get('answer_type') or 'all'))

    def compute_metrics(self, results: list) -> dict:
        if self.result_file:
            import json
            import os
            os.makedirs(os.path.dirname(os.path.abspath(self.result_file)), exist_ok=True)
            with open(self.result_file, 'w') as f:
                json.dump([dict(question_id=r['question_id'], answer=r['answer']) for r in results], f)
            MMLogger.get_current_instance().info(f'VQA predictions written to {self.result_file}')
        scored = [r for r in results if r['acc'] is not None]
        if not scored:
            MMLogger.get_current_instance().warning('VQAAccuracy: no sample has ground-truth answers; '
                                                    'only predictions were collected')
            return {}
        metrics = {'accuracy': 100.0 * sum(r['acc'] for r in scored) / len(scored)}
        if self.by_answer_type:
            groups: dict[str, list[float]] = defaultdict(list)
            for r in scored:
                groups[r['answer_type']].append(r['acc'])
            if len(groups) > 1 or 'all' not in groups:
                for name, accs in sorted(groups.items()):
                    metrics[f'{name.replace("/", "_")}_accuracy'] = 100.0 * sum(accs) / len(accs)
        return metrics


@METRICS.register_module()
class VQAExactMatch(BaseMetric):
    """Exact-match accuracy (in %) for single-answer datasets such as GQA:
    ``pred_answer`` and the first ``gt_answers`` entry are compared after
    :func:`normalize_answer`."""

    default_prefix = 'gqa'

    def process(self, data_batch: Any, data_samples: Sequence) -> None:
        for sample in data_samples:
            get = sample.get if isinstance(sample, dict) else (lambda k, d=None, s=sample: getattr(s, k, d))
            gts = get('gt_answers')
            if gts:
                self.results.append(float(normalize_answer(str(get('pred_answer'))) == normalize_answer(gts[0])))

    def compute_metrics(self, results: list) -> dict:
        return {'accuracy': 100.0 * sum(results) / max(len(results), 1)}


__all__ = ['CONTRACTIONS', 'VQAAccuracy', 'VQAExactMatch', 'normalize_answer', 'process_digit_article',
           'process_punctuation', 'vqa_accuracy']
