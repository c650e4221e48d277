# SHERL on a CLIP-ViL-style VQA model, trained on the VQA demo data in a few minutes on a CPU.
# Frozen EfficientNet-Lite0 grid features (4 x 4 at 128 px) + a single-stream cross-modal transformer made of
# all-MiniLM-L6-v2 (6 layers, 384-d); SHERL: MTSA (CLIP-ViL variant, d = 192) over the joint input and
# layers 0..4, late regulation of layer 5; trained: MTSA + answer classifier.
#   python tools/data/make_vqa_demo.py
#   python tools/train.py configs/demo/sherl_clipvil_vqa_demo.py
# MiniLM is a text-only model: the visual projection in front of it is random and, under SHERL (whose
# input stage runs without grad), stays fixed; MTSA's trainable per-set projections read through it.
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/vqa_demo.py', '../_base_/models/minilm.py']

model = dict(
    type='CLIPViLVQA',
    image_encoder=dict(type='EfficientNetStack', pretrained=True, drop_connect_rate=0.0),
    cross_encoder=dict(type='VisualBertStack', pretrained={{_base_.minilm_dir}}, visual_dim=1280, num_visual_positions=16),
    answer_vocab='data/demo_vqa/answer_vocab.json',
    max_question_length=20,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True),
    tuner=dict(type='SHERL', num_late_layers=1, select_layers=None, mtsa=dict(variant='clipvil', reduction=2)),
)

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=40),
    dict(type='MultiStepLR', by_epoch=True, milestones=[5], gamma=0.2),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=6, val_interval=6)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=20), checkpoint=dict(interval=6, max_keep_ckpts=1))
randomness = dict(seed=0)
