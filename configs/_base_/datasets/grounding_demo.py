# The grounding demo data, built from package-shipped content with
#   python tools/data/make_grounding_demo.py          (writes data/demo_grounding/{source,target}/)
# MDETR's RefCOCO format, read by the same RefCOCODataset as the real data. This file is the
# "target" variant, the transfer task: the source's name grounding in other words ("a puppy",
# "the desert plant", "football": words the source model never read), 600 train / 100 val /
# 100 testA (animals) / 100 testB (objects) expressions on 160-px-high images.
# grounding_demo_source.py is the "source" variant (name grounding, "the banana") for pre-training.
# train_pipeline augments (random shorter side; no flip, no crop: a crop could cut away the emoji an
# expression relates to; RandomSizeCrop is in refcoco.py). test_pipeline fits every image into
# demo_size x demo_size and pads it there: fixed shapes and no randomness, which is also what the
# demo trains with, so that FrozenFeatureCacheHook can cache the frozen routes. Metric keys:
# refexp_giou0.5/demo_target_{val,testA,testB}_P@{1,5,10} and refexp_giou0.5/P@k.
dataset_type = 'RefCOCODataset'
data_root = 'data/demo_grounding/target/'
demo_variant = 'target'

demo_train_scales = [128, 144, 160, 176, 192]   # shorter side
demo_max_size = 288
demo_size = 224
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'pad_shape', 'text',
             'tokens_positive', 'dataset_name', 'split', 'ref_bbox', 'sample_idx')

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize', scales=[(demo_max_size, s) for s in demo_train_scales], keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(demo_size, demo_size), keep_ratio=True),
    dict(type='Pad', size=(demo_size, demo_size)),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]

train_dataloader = dict(
    batch_size=8, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='finetune_refcoco_train.json',
                 data_prefix=dict(img='images/'), metainfo=dict(dataset_name=f'demo_{demo_variant}'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='finetune_refcoco_val.json',
                 data_prefix=dict(img='images/'), metainfo=dict(dataset_name=f'demo_{demo_variant}'),
                 test_mode=True, pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=16, num_workers=0, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ConcatDataset', datasets=[
        dict(type=dataset_type, data_root=data_root, ann_file=f'finetune_refcoco_{split}.json',
             data_prefix=dict(img='images/'), metainfo=dict(dataset_name=f'demo_{demo_variant}'),
             test_mode=True, pipeline=test_pipeline)
        for split in ('val', 'testA', 'testB')]))
val_evaluator = dict(type='RefExpAccuracy', topk=(1, 5, 10), iou_thr=0.5, iou_mode='giou')
test_evaluator = val_evaluator
