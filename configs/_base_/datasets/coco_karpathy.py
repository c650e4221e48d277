# MS-COCO image-text retrieval, Karpathy splits (113,287 train incl. restval / 5,000 val / 5,000 test).
# Put the files here (relative to the working directory):
#   data/coco/annotations/dataset_coco.json   Karpathy's split file (from the "caption_datasets" archive)
#   data/coco/images/train2014/*.jpg          COCO 2014 train images
#   data/coco/images/val2014/*.jpg            COCO 2014 val images (Karpathy's val/test/restval come from here)
# The JSON's "filepath" field (train2014 / val2014) picks the folder.
dataset_type = 'KarpathyRetrievalDataset'
data_root = 'data/coco/'
image_size = 512  # VSE∞ with a grid backbone: 512 x 512 inputs (--input_scale_factor 2.0)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackMultiModalInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='PackMultiModalInputs'),
]

train_dataloader = dict(
    batch_size=112, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_coco.json',
                 data_prefix=dict(img_path='images/'), split=['train', 'restval'], mode='train',
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_coco.json',
                 data_prefix=dict(img_path='images/'), split='val', mode='eval', pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=64, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_coco.json',
                 data_prefix=dict(img_path='images/'), split='test', mode='eval', pipeline=test_pipeline))
# COCO reports 1K (mean over 5 folds of the 5K test images) and 5K numbers; both come from one pass.
val_evaluator = dict(type='RetrievalRecall', num_folds=5, fold_name='1k', full_name='5k')
test_evaluator = dict(type='RetrievalRecall', num_folds=5, fold_name='1k', full_name='5k')
