# RefCOCO (UNC splits) for referring-expression grounding, in MDETR's annotation format.
# Put the files here (relative to the working directory):
#   data/refcoco/mdetr_annotations/finetune_refcoco_{train,val,testA,testB}.json
#       from MDETR's mdetr_annotations.tar.gz (zenodo record 4729015; the same archive holds the
#       refcoco+ and refcocog files used by refcocop.py / refcocog.py)
#   data/refcoco/train2014/COCO_train2014_*.jpg      COCO 2014 train images (all RefCOCO images are there)
# RefCOCO: 120,624 train / 10,834 val / 5,657 testA / 5,095 testB expressions.
# Augmentation = MDETR's make_coco_transforms('train', cautious=True): random shorter side 480..800
# (max 1333), or resize 400/500/600 -> RandomSizeCrop(384, 1333, respect_boxes) -> resize; NO flip
# (it would contradict "left"/"right" in the expressions). Test: shorter side 800, max 1333.
# Metric: MDETR's protocol (predictions sorted by score, GIoU >= 0.5), P@1 = "Acc@0.5";
# keys refexp_giou0.5/refcoco_{val,testA,testB}_P@{1,5,10} and refexp_giou0.5/P@k over all.
dataset_type = 'RefCOCODataset'
data_root = 'data/refcoco/'
ann_prefix = 'mdetr_annotations/finetune_refcoco'
refexp_dataset_name = 'refcoco'
backend_args = None

train_scales = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
max_size = 1333
# metainfo the grounding model and RefExpAccuracy read (sherl_mm.datasets.GROUNDING_META_KEYS)
meta_keys = ('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'pad_shape', 'text',
             'tokens_positive', 'dataset_name', 'split', 'ref_bbox', 'sample_idx')

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoice', transforms=[
        [dict(type='RandomChoiceResize', scales=[(max_size, s) for s in train_scales], keep_ratio=True)],
        [dict(type='RandomChoiceResize', scales=[(max_size, 400), (max_size, 500), (max_size, 600)],
              keep_ratio=True),
         dict(type='RandomSizeCrop', min_size=384, max_size=max_size, respect_boxes=True),
         dict(type='RandomChoiceResize', scales=[(max_size, s) for s in train_scales], keep_ratio=True)],
    ]),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),  # gt boxes follow the resize; ref_bbox stays original
    dict(type='Resize', scale=(max_size, 800), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=meta_keys),
]

train_dataloader = dict(
    batch_size=4, num_workers=4, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file=ann_prefix + '_train.json',
                 data_prefix=dict(img='train2014/'), metainfo=dict(dataset_name=refexp_dataset_name),
                 pipeline=train_pipeline, backend_args=backend_args))
val_dataloader = dict(
    batch_size=8, num_workers=4, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file=ann_prefix + '_val.json',
                 data_prefix=dict(img='train2014/'), metainfo=dict(dataset_name=refexp_dataset_name),
                 test_mode=True, pipeline=test_pipeline, backend_args=backend_args))
# val + testA + testB in one pass; RefExpAccuracy reports each split (the "split" meta) separately.
test_dataloader = dict(
    batch_size=8, num_workers=4, persistent_workers=True, drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ConcatDataset', datasets=[
        dict(type=dataset_type, data_root=data_root, ann_file=ann_prefix + f'_{split}.json',
             data_prefix=dict(img='train2014/'), metainfo=dict(dataset_name=refexp_dataset_name),
             test_mode=True, pipeline=test_pipeline, backend_args=backend_args)
        for split in ('val', 'testA', 'testB')]))
val_evaluator = dict(type='RefExpAccuracy', topk=(1, 5, 10), iou_thr=0.5, iou_mode='giou')
test_evaluator = val_evaluator
