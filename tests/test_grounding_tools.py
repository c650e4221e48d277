"""The grounding configs through the tools: configs/*_mdetr_refcoco.py build
(at tiny sizes) and train a step with every tuner; SHERL's paper-size count
comes from the config itself; tools/train.py -> checkpoint -> tools/test.py
round trip with the paper's schedule (two lr groups, EMA used for
evaluation); the demo script end to end on a tiny dataset."""
import json
import os
import os.path as osp
import pickle
import sys

import pytest
import torch
from mmengine.config import Config

sys.path.insert(0, osp.dirname(__file__))
import _tiny_grounding as T  # noqa: E402
from _tools import load_tool  # noqa: E402

import sherl_mm  # noqa: E402
from sherl_mm.demo.grounding import build_grounding_demo  # noqa: E402
from sherl_mm.engine import run_test, run_train  # noqa: E402
from sherl_mm.registry import MODELS  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
TUNERS = ('sherl', 'fullft', 'lora', 'adapter', 'bitfit', 'prompt', 'lst', 'unipt')
SPLITS = ('val', 'testA', 'testB')


def tiny_model_options(cfg: Config) -> None:
    """Shrink the paper-size model of a grounding config (tiny random stacks,
    no MDETR checkpoint) without touching its tuner."""
    m = cfg.model
    m.image_backbone = T.image_stack_cfg()
    m.text_encoder = T.text_stack_cfg()
    for name in ('encoder', 'decoder'):
        m[name].update(embed_dims=T.D, num_heads=4, feedforward_channels=64)
    m.update(embed_dims=T.D, num_queries=5, num_tokens=32, contrastive_dim=8, mdetr_checkpoint=None)


@pytest.mark.parametrize('tuner', TUNERS)
def test_refcoco_configs_build_and_train_a_step(tuner):
    sherl_mm.register_all_modules(init_default_scope=False)
    cfg = Config.fromfile(osp.join(REPO, 'configs', f'{tuner}_mdetr_refcoco.py'))
    assert cfg.model.mdetr_checkpoint.endswith('pretrained_resnet101_checkpoint.pth')
    tiny_model_options(cfg)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model.to_dict())
    inputs, samples = T.make_batch(model)
    losses = model.loss(inputs, samples)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    assert any(n.startswith('head.') for n in trainable)
    image_trains = any(n.startswith('stacks.image.') for n in trainable)
    assert image_trains == (tuner == 'fullft')


def test_fullft_config_freezes_the_resnet_stem_and_first_stage():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'fullft_mdetr_refcoco.py'))
    tiny_model_options(cfg)
    model = MODELS.build(cfg.model.to_dict())
    image = {n: p.requires_grad for n, p in model.stacks['image'].stack.named_parameters()}
    assert not any(v for n, v in image.items() if n.startswith(('conv1', 'bn1', 'layers.0.', 'layers.1.')))
    assert all(v for n, v in image.items() if n.startswith('layers.3.'))


def test_paper_size_config_trainable_count():
    """configs/sherl_mdetr_refcoco.py at its own sizes (ResNet-101, RoBERTa-base
    built from a config with random weights): 696,200 trainable (docs/method.md)."""
    from test_grounding_model import PAPER_TEXT
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'sherl_mdetr_refcoco.py'))
    cfg.model.text_encoder = dict(type='HFEncoderStack', config=PAPER_TEXT, tokenizer=T.minilm_tokenizer_dir())
    cfg.model.mdetr_checkpoint = None
    model = MODELS.build(cfg.model.to_dict())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 696_200


@pytest.fixture(scope='module')
def tiny_refcoco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('refcoco_tiny'))
    build_grounding_demo(root, seed=1, variants=('target', ), num_train=8, num_val=4, num_test=4, image_size=96)
    return osp.join(root, 'target') + '/'


def data_options(root: str) -> dict:
    """RefCOCO's loaders on the tiny demo-format data (same dataset class and
    annotation format), with the demo's light pipelines and no workers."""
    demo = Config.fromfile(osp.join(REPO, 'configs', '_base_', 'datasets', 'grounding_demo.py'))

    def loader(split, pipeline, batch):
        return dict(batch_size=batch, num_workers=0, persistent_workers=False,
                    dataset=dict(data_root=root, ann_file=f'finetune_refcoco_{split}.json',
                                 data_prefix=dict(img='images/'), pipeline=pipeline))
    test = loader('val', demo.test_pipeline, 4)
    test['dataset'] = dict(type='ConcatDataset', _delete_=True, datasets=[
        dict(type='RefCOCODataset', data_root=root, ann_file=f'finetune_refcoco_{s}.json',
             data_prefix=dict(img='images/'), test_mode=True,
             pipeline=demo.test_pipeline) for s in SPLITS])
    return {'train_dataloader': loader('train', demo.train_pipeline, 4),
            'val_dataloader': loader('val', demo.test_pipeline, 4), 'test_dataloader': test}


def test_train_checkpoint_test_round_trip(tiny_refcoco, tmp_path):
    """SHERL with the paper's schedule: the optimizer holds exactly the
    trainable tensors in two lr groups (5e-4 tuner, 5e-5 heads); the EMA
    weights are what validation used and what the checkpoint stores, so
    tools/test.py on the checkpoint reproduces the last validation."""
    train_tool, test_tool = load_tool('train.py'), load_tool('test.py')
    cfg_path = osp.join(REPO, 'configs', 'sherl_mdetr_refcoco.py')
    cfg = Config.fromfile(cfg_path)
    tiny_model_options(cfg)
    def options():  # merging consumes '_delete_', so a fresh dict for each tool
        return {'model': dict(_delete_=True, **cfg.model.to_dict()), **data_options(tiny_refcoco),
                'train_cfg.max_epochs': 2, 'default_hooks.logger.interval': 1}
    work_dir = str(tmp_path / 'work')
    args = train_tool.parse_args([cfg_path, '--work-dir', work_dir])
    args.cfg_options = options()
    runner = run_train(args)

    groups = runner.optim_wrapper.optimizer.param_groups
    assert sorted({g['lr'] for g in groups}) == pytest.approx([5e-5, 5e-4])  # after epoch 2: no decay yet
    in_optimizer = {id(p) for g in groups for p in g['params']}
    trainable = {id(p) for p in runner.model.parameters() if p.requires_grad}
    assert in_optimizer == trainable
    heads = {id(p) for p in runner.model.head.parameters()}
    assert all(g['lr'] == pytest.approx(5e-5) for g in groups if {id(p) for p in g['params']} <= heads)
    val = {k[len('val/'):]: float(v.current()) for k, v in runner.message_hub.log_scalars.items()
           if k.startswith('val/refexp')}
    assert 'refexp_giou0.5/P@1' in val

    ckpt = osp.join(work_dir, 'epoch_2.pth')
    state = torch.load(ckpt, map_location='cpu', weights_only=False)
    ema_hook = next(h for h in runner.hooks if type(h).__name__ == 'EMAHook')
    ema_weights = ema_hook.ema_model.module.state_dict()
    for name, value in state['state_dict'].items():
        torch.testing.assert_close(value, ema_weights[name], rtol=0, atol=0)
    mtsa = 'stacks.decoder.mtsa.0.alpha'
    assert mtsa in state['state_dict'] and not torch.equal(state['state_dict'][mtsa],
                                                            state['ema_state_dict']['module.' + mtsa])

    preds = str(tmp_path / 'preds.pkl')
    args = test_tool.parse_args([cfg_path, ckpt, '--work-dir', work_dir, '--out', preds])
    args.cfg_options = options()
    metrics = run_test(args)
    for split in SPLITS:
        assert f'refexp_giou0.5/demo_target_{split}_P@1' in metrics
    # the val split is evaluated with the same (EMA) weights as at the end of training
    assert metrics['refexp_giou0.5/demo_target_val_P@1'] == pytest.approx(val['refexp_giou0.5/P@1'])
    with open(preds, 'rb') as f:
        samples = pickle.load(f)
    assert len(samples) == 4 * len(SPLITS) and samples[0]['pred_instances']['bboxes'].shape == (5, 4)


def test_demo_random_pick_accuracy(tmp_path):
    """The yardstick row: 1 / (emoji in the scene), averaged over expressions."""
    demo = load_tool('demo.py')
    for split, scenes in {'val': [(2, 2), (4, 1)], 'testA': [(3, 1)], 'testB': [(4, 2)]}.items():
        with open(tmp_path / f'scenes_{split}.json', 'w') as f:
            json.dump(dict(scenes=[dict(objects=[{}] * n, expressions=[{}] * k) for n, k in scenes]), f)
    acc = demo.random_pick_accuracy(str(tmp_path))
    assert acc == pytest.approx(dict(val=100 * (0.5 + 0.5 + 0.25) / 3, testA=100 / 3, testB=25.0))


def test_demo_sherl_placements_name_their_configs():
    """--sherl-placement picks SHERL's config: the text encoder by default, the
    paper's MDETR placement (MTSA on the fusion transformer) on request."""
    demo = load_tool('demo.py')
    assert demo.parse_args([]).sherl_placement == 'text'
    assert demo.parse_args(['--sherl-placement', 'fusion']).sherl_placement == 'fusion'
    with pytest.raises(SystemExit):
        demo.parse_args(['--sherl-placement', 'decoder'])
    for placement, path in demo.SHERL_CONFIGS.items():
        tuner = Config.fromfile(osp.join(REPO, path)).model.tuner
        assert tuner.type == 'SHERL'
        assert (tuner.get('targets') == ['text']) == (placement == 'text'), placement


def test_demo_script_end_to_end(tmp_path):
    """tools/demo.py on a tiny dataset, one epoch per step (the real demo
    is `make demo`): results per method and split, and the PNG; the two
    transfers run at the same time (--jobs 2, the default)."""
    demo = load_tool('demo.py')
    out = tmp_path / 'demo'
    demo.main(['--out', str(out), '--data-root', str(tmp_path / 'data'), '--source-epochs', '1',
               '--target-epochs', '1',
               '--data-args', '--num-train 16 --num-val 4 --num-test 4 --image-size 96'])
    with open(out / 'results.json') as f:
        results = json.load(f)
    assert set(results) == {'random_pick', 'before_transfer', 'sherl_placement', 'sherl', 'fullft'}
    assert results['sherl_placement'] == 'text'
    assert set(results['before_transfer']) == set(SPLITS) and set(results['random_pick']) == set(SPLITS)
    assert all(0 < v <= 50 for v in results['random_pick'].values())   # 2-4 emoji per scene
    for method in ('sherl', 'fullft'):
        r = results[method]
        assert set(r['acc']) == set(SPLITS) and all(0 <= v <= 100 for v in r['acc'].values())
        assert 0 < r['trainable_params'] < r['total_params'] and r['peak_train_mem_gib'] > 0
        other = {'sherl': 'fullft', 'fullft': 'sherl'}[method]
        with open(out / f'{method}-train.log') as f:   # its own log, not interleaved with the other's
            log = f.read()
        assert str(out / method) in log and str(out / other) not in log
    assert results['sherl']['trainable_params'] < results['fullft']['trainable_params']
    assert os.path.getsize(out / 'sherl_predictions.png') > 1000
