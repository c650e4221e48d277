"""VQA: official accuracy and normalisation, VQAv2 reader, demo builder, model."""
from __future__ import annotations

import json
import os
import os.path as osp

import pytest
from mmengine.registry import DefaultScope

from sherl_mm.datasets import AnnotationError, VQAv2Dataset
from sherl_mm.demo.vqa import build_vqa_demo
from sherl_mm.datasets.vqa import build_answer_vocab, soft_score
from sherl_mm.evaluation import VQAAccuracy, normalize_answer, vqa_accuracy
from sherl_mm.evaluation.vqa import CONTRACTIONS, process_digit_article, process_punctuation

# ----------------------------------------------------------------------------- metric


def test_leave_one_out_accuracy():
    assert vqa_accuracy('yes', ['yes'] * 10) == 1.0
    assert vqa_accuracy('no', ['yes'] * 10) == 0.0
    # n matching humans out of 10: 0.3, 0.6, 0.9, 1, 1 (mean over the 10 subsets of 9 of min(#/3, 1))
    for n, expected in [(1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0)]:
        gts = ['dog'] * n + ['cat'] * (10 - n)
        assert vqa_accuracy('dog', gts) == pytest.approx(expected)
        assert soft_score(n) == pytest.approx(expected)
    assert soft_score(1, 'min3') == pytest.approx(1 / 3) and soft_score(5, 'min3') == 1.0


def test_normalisation_cases():
    # punctuation: glued marks become spaces, spaced marks vanish; periods go unless a digit follows
    assert process_punctuation('hot-dog') == 'hot dog'
    assert process_punctuation('yes !') == 'yes '
    assert process_punctuation('1,000') == '1000'            # a digit,digit comma: every mark is removed
    assert process_punctuation('3.5 m.') == '3.5 m'
    assert process_punctuation('end.of.line') == 'endofline'
    # digits, articles, contractions (and lower case)
    assert process_digit_article('Two Dogs') == '2 dogs'
    assert process_digit_article('the none') == '0'
    assert process_digit_article('a ten') == '10'
    assert process_digit_article('dont know') == "don't know"
    assert process_digit_article("couldn'tve") == "couldn't've" and len(CONTRACTIONS) == 120
    assert normalize_answer(' The Red-Car.\n') == 'red car'
    # the predicted answer is always normalised
    assert vqa_accuracy('Yes.', ['yes'] * 10) == 1.0
    assert vqa_accuracy('two', ['2'] * 10) == 1.0
    assert vqa_accuracy('the dog', ['dog'] * 10) == 1.0
    assert vqa_accuracy('hot-dog', ['hot dog'] * 10) == 1.0
    assert vqa_accuracy('1,000', ['1000'] * 10) == 1.0
    # the official tool normalises human answers only for punctuation, and only when they disagree:
    # 'two' written by humans does not match the normalised prediction '2'
    gts = ['two'] * 2 + ['three'] * 8
    assert vqa_accuracy('two', gts) == 0.0
    assert vqa_accuracy('two', gts, mode='normalize_all') == pytest.approx(0.6)
    gts = ['hot-dog'] * 3 + ['sandwich'] * 7                 # disagreeing humans: punctuation applied
    assert vqa_accuracy('hot dog', gts) == pytest.approx(0.9)
    assert vqa_accuracy('3', ['3'] * 3 + ['2'] * 7) == pytest.approx(0.9)


def test_vqa_accuracy_metric_per_answer_type(tmp_path):
    metric = VQAAccuracy(result_file=str(tmp_path / 'res.json'))
    metric.process({}, [dict(pred_answer='yes', gt_answers=['yes'] * 10, answer_type='yes/no', question_id=1),
                        dict(pred_answer='2', gt_answers=['2'] * 2 + ['3'] * 8, answer_type='number',
                             question_id=2),
                        dict(pred_answer='red', gt_answers=['blue'] * 10, answer_type='other', question_id=3)])
    out = metric.compute_metrics(metric.results)
    assert out['accuracy'] == pytest.approx(100 * (1 + 0.6 + 0) / 3)
    assert out['yes_no_accuracy'] == 100 and out['number_accuracy'] == pytest.approx(60)
    assert out['other_accuracy'] == 0
    with open(tmp_path / 'res.json') as f:
        assert json.load(f) == [dict(question_id=1, answer='yes'), dict(question_id=2, answer='2'),
                                dict(question_id=3, answer='red')]


# ----------------------------------------------------------------------------- reader

def _write(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f)
    return str(path)


def _vqa_files(tmp_path, answers_of=None, drop_key=None, image_ids=(1, 2)):
    questions, annotations = [], []
    for k, image_id in enumerate(image_ids):
        questions.append(dict(image_id=image_id, question=f'what is {k}?', question_id=image_id * 10))
        answers = (answers_of or {}).get(k, ['two'] * 6 + ['2'] + ['three'] * 3)
        ann = dict(question_id=image_id * 10, image_id=image_id, question_type='what is', answer_type='other',
                   multiple_choice_answer=answers[0],
                   answers=[dict(answer=a, answer_id=j + 1, answer_confidence='yes') for j, a in enumerate(answers)])
        if drop_key is not None and k == 1:
            del ann[drop_key]
        annotations.append(ann)
    os.makedirs(tmp_path / 'img', exist_ok=True)
    for image_id in image_ids[:2]:
        open(tmp_path / 'img' / f'COCO_t2014_{image_id:012d}.jpg', 'wb').close()
    q = _write(tmp_path / 'q.json', dict(data_subtype='t2014', questions=questions))
    a = _write(tmp_path / 'a.json', dict(annotations=annotations))
    return q, a


def test_vqa_reader_targets_and_vocab(tmp_path):
    q, a = _vqa_files(tmp_path, answers_of={1: ['yes'] * 10})
    ds = VQAv2Dataset(question_file=q, ann_file=a, answer_vocab=str(tmp_path / 'vocab.json'), min_answer_count=1,
                      data_prefix=dict(img_path=str(tmp_path / 'img')))
    vocab = ds.metainfo['answers']
    assert sorted(vocab) == ['2', 'yes'] and json.load(open(tmp_path / 'vocab.json')) == vocab
    info = ds.get_data_info(0)
    # 'two' x6 + '2' x1 normalise to '2' (7 humans -> 1.0); 'three' -> '3' is not in the vocabulary
    assert info['answer_labels'] == [vocab.index('2')] and info['answer_scores'] == [1.0]
    assert info['img_path'].endswith('COCO_t2014_000000000001.jpg') and len(info['gt_answers']) == 10
    assert build_answer_vocab(a, min_count=2) == []


def test_vqa_reader_errors_name_file_and_record(tmp_path):
    q, a = _vqa_files(tmp_path, answers_of={1: ['yes'] * 9})
    with pytest.raises(AnnotationError, match=r'a\.json: annotations\[1\] \(question_id 20\) has 9 answers, '
                                              r'expected 10'):
        VQAv2Dataset(question_file=q, ann_file=a, min_answer_count=1, data_prefix=dict(img_path=str(tmp_path)))
    q, a = _vqa_files(tmp_path, drop_key='answers')
    with pytest.raises(AnnotationError, match=r"a\.json: annotations\[1\] has no key 'answers'"):
        VQAv2Dataset(question_file=q, ann_file=a, min_answer_count=1, data_prefix=dict(img_path=str(tmp_path)))
    q, a = _vqa_files(tmp_path, image_ids=(1, 2, 3))  # no image file for image 3
    with pytest.raises(FileNotFoundError, match=r'q\.json: question_id 30: image file not found: .*'
                                                r'COCO_t2014_000000000003\.jpg'):
        VQAv2Dataset(question_file=q, ann_file=a, min_answer_count=1,
                     data_prefix=dict(img_path=str(tmp_path / 'img')))
    with pytest.raises(FileNotFoundError, match='answer vocabulary file not found'):
        VQAv2Dataset(question_file=q, answer_vocab=str(tmp_path / 'none.json'), check_images=False)


def test_vqa_demo_is_deterministic_and_readable(tmp_path):
    pa = build_vqa_demo(str(tmp_path / 'a'), seed=5, num_train_images=8, num_val_images=3, image_size=64)
    pb = build_vqa_demo(str(tmp_path / 'b'), seed=5, num_train_images=8, num_val_images=3, image_size=64)
    for key in ('train_questions', 'train_annotations', 'val_annotations', 'answer_vocab'):
        with open(pa[key]) as fa, open(pb[key]) as fb:
            assert json.load(fa) == json.load(fb)
    anns = json.load(open(pa['train_annotations']))['annotations']
    assert all(len(x['answers']) == 10 for x in anns)
    assert {x['answer_type'] for x in anns} <= {'yes/no', 'number', 'other'}
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackMultiModalInputs')]
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        ds = VQAv2Dataset(data_root=str(tmp_path / 'a'), question_file=osp.basename(pa['val_questions']),
                          ann_file=osp.basename(pa['val_annotations']), answer_vocab='answer_vocab.json',
                          data_prefix=dict(img_path='images'), pipeline=pipeline)
    sample = ds[0]['data_samples']
    assert tuple(ds[0]['inputs'].shape) == (3, 64, 64)
    assert sample.question.endswith('?') and len(sample.gt_answers) == 10
    # on the training split (the vocabulary's source) every majority answer is in the vocabulary, score 1
    train = VQAv2Dataset(data_root=str(tmp_path / 'a'), question_file=osp.basename(pa['train_questions']),
                         ann_file=osp.basename(pa['train_annotations']), answer_vocab='answer_vocab.json',
                         data_prefix=dict(img_path='images'))
    for i in range(len(train)):
        info = train.get_data_info(i)
        assert info['answer_labels'] and max(info['answer_scores']) == 1.0



def test_gqa_reader_and_exact_match(tmp_path):
    from sherl_mm.datasets import GQADataset
    from sherl_mm.evaluation import VQAExactMatch
    os.makedirs(tmp_path / 'images', exist_ok=True)
    for name in ('n1', 'n2'):
        open(tmp_path / 'images' / f'{name}.jpg', 'wb').close()
    ann = _write(tmp_path / 'train_balanced_questions.json',
                 {'q1': dict(imageId='n1', question='Is it red?', answer='yes', types=dict(structural='verify')),
                  'q2': dict(imageId='n2', question='What is it?', answer='The dog')})
    ds = GQADataset(ann_file=ann, data_prefix=dict(img_path=str(tmp_path / 'images')))
    assert ds.metainfo['answers'] == ['dog', 'yes']
    assert ds.get_data_info(1)['answer_labels'] == [0] and ds.get_data_info(0)['answer_type'] == 'verify'
    metric = VQAExactMatch()
    metric.process({}, [dict(pred_answer='dog', gt_answers=['The dog']), dict(pred_answer='no', gt_answers=['yes'])])
    assert metric.compute_metrics(metric.results) == {'accuracy': 50.0}
    bad = _write(tmp_path / 'bad.json', {'q3': dict(question='Where?')})
    with pytest.raises(AnnotationError, match=r"bad\.json: question 'q3' has no key 'imageId'"):
        GQADataset(ann_file=bad)


# ----------------------------------------------------------------------------- model through tools/train.py

from test_retrieval import TINY_BERT, TINY_RESNET, minilm_dir, run_config, val_metrics  # noqa: E402


@pytest.fixture(scope='module')
def tiny_vqa_data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('vqa_demo'))
    paths = build_vqa_demo(root, seed=0, num_train_images=6, num_val_images=3, image_size=64)
    return root, paths


def _vqa_options(root: str, paths: dict) -> dict:
    pipeline = [dict(type='LoadImageFromFile'), dict(type='PackMultiModalInputs')]

    def loader(split):
        return dict(batch_size=8, num_workers=0, persistent_workers=False,
                    dataset=dict(data_root=root, question_file=osp.basename(paths[f'{split}_questions']),
                                 ann_file=osp.basename(paths[f'{split}_annotations']),
                                 answer_vocab='answer_vocab.json', min_answer_count=1,
                                 vocab_ann_file=None, data_prefix=dict(img_path='images'), pipeline=pipeline))
    return {
        'model.image_encoder': TINY_RESNET,
        'model.cross_encoder': dict(_delete_=True, type='VisualBertStack', config=TINY_BERT, tokenizer=minilm_dir(),
                                    num_visual_positions=4),
        'model.visual_grid': 2,
        'model.answer_vocab': paths['answer_vocab'],
        'model.data_preprocessor': dict(_delete_=True, type='ImgDataPreprocessor', mean=[127.5] * 3,
                                        std=[127.5] * 3, bgr_to_rgb=True),
        'train_dataloader': loader('train'), 'val_dataloader': loader('val'), 'test_dataloader': loader('val'),
        'optim_wrapper.accumulative_counts': 1,
        'train_cfg.max_epochs': 1, 'train_cfg.val_interval': 1, 'param_scheduler': [], 'custom_hooks': [],
        'default_hooks.logger.interval': 1,
        'default_hooks.checkpoint': dict(_delete_=True, type='AtomicCheckpointHook', interval=1),
    }


@pytest.mark.parametrize('config', ['configs/sherl_clipvil_vqav2.py', 'configs/fullft_clipvil_vqav2.py'])
def test_clipvil_trains_from_config(config, tiny_vqa_data, tmp_path):
    root, paths = tiny_vqa_data
    runner = run_config(config, str(tmp_path / 'work'), _vqa_options(root, paths))
    metrics = val_metrics(runner)
    assert 0 <= metrics['vqa/accuracy'] <= 100
    names = [n for n, p in runner.model.named_parameters() if p.requires_grad]
    assert any(n.startswith('logit_fc.') for n in names)
    assert not any(n.startswith('stacks.image.') for n in names)  # the image encoder stays frozen
    if 'sherl' in config:
        assert all(n.startswith(('logit_fc.', 'stacks.cross.mtsa.')) for n in names)
    else:
        assert 'stacks.cross.stack.visual_proj.weight' in names
        assert any(n.startswith('stacks.cross.stack.model.encoder.layer.') for n in names)


@pytest.mark.parametrize('tuner', ['lora', 'adapter', 'lst', 'unipt'])
def test_clipvil_sibling_configs_build_and_train_step(tuner, tiny_vqa_data):
    import torch
    from mmengine.config import Config
    from mmengine.structures import BaseDataElement

    from sherl_mm.registry import MODELS
    root, paths = tiny_vqa_data
    cfg = Config.fromfile(osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs',
                                   f'{tuner}_clipvil_vqav2.py'))
    options = _vqa_options(root, paths)
    cfg.merge_from_dict({k: v for k, v in options.items() if k.startswith('model.')})
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        model = MODELS.build(cfg.model)
    samples = [BaseDataElement(metainfo=dict(question='how many dogs?', answer_labels=[0], answer_scores=[1.0]))
               for _ in range(2)]
    data = model.data_preprocessor(dict(inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)] * 2,
                                        data_samples=samples), True)
    loss = model(**data, mode='loss')['loss']
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None for n, p in model.named_parameters() if n.startswith('stacks.cross.'))


def test_sherl_clipvil_trainable_parameters_match_the_authors_model(tmp_path):
    """Paper-size cross-modal BERT-base with 3,129 answers: MTSA 7,387,778 + logit_fc 5,993,529
    (docs/method.md), nothing else trains."""
    from mmengine.config import Config

    from sherl_mm.registry import MODELS
    from test_retrieval import BERT_BASE, REPO
    vocab = _write(tmp_path / 'vocab.json', [f'answer {i}' for i in range(3129)])
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'sherl_clipvil_vqav2.py'))
    cfg.merge_from_dict({'model.image_encoder': TINY_RESNET, 'model.answer_vocab': vocab,
                         'model.cross_encoder': dict(_delete_=True, type='VisualBertStack', config=BERT_BASE,
                                                     tokenizer=minilm_dir(), num_visual_positions=4)})
    with DefaultScope.overwrite_default_scope('sherl_mm'):
        model = MODELS.build(cfg.model)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(model.stacks['cross'].mtsa) == 7_387_778
    assert count(model.logit_fc) == 5_993_529
    assert count(model) == 7_387_778 + 5_993_529
