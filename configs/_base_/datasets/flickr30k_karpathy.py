# Flickr30K image-text retrieval, Karpathy splits (29,000 train / 1,014 val / 1,000 test; 5 captions each).
# Put the files here (relative to the working directory):
#   data/flickr30k/annotations/dataset_flickr30k.json   Karpathy's split file
#   data/flickr30k/images/*.jpg                          the Flickr30K images
dataset_type = 'KarpathyRetrievalDataset'
data_root = 'data/flickr30k/'
image_size = 224

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
    batch_size=128, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_flickr30k.json',
                 data_prefix=dict(img_path='images/'), split='train', mode='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_flickr30k.json',
                 data_prefix=dict(img_path='images/'), split='val', mode='eval', pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=64, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='annotations/dataset_flickr30k.json',
                 data_prefix=dict(img_path='images/'), split='test', mode='eval', pipeline=test_pipeline))
val_evaluator = dict(type='RetrievalRecall')
test_evaluator = dict(type='RetrievalRecall')
