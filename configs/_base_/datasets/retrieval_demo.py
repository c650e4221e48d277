# The retrieval demo data, built from package-shipped images with
#   python tools/data/make_retrieval_demo.py          (writes data/demo_retrieval/)
# 622 training images (22 scikit-image photos + 600 emoji scenes), 100 val, 100 test, 5 captions each,
# in Karpathy's format, so the same reader as COCO/Flickr30K is used.
dataset_type = 'KarpathyRetrievalDataset'
data_root = 'data/demo_retrieval/'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackMultiModalInputs'),  # the demo images are 128 x 128 already; no flip: captions say left/right
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=32, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='dataset_demo.json', split='train',
                 mode='train', pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=50, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='dataset_demo.json', split='val',
                 mode='eval', pipeline=test_pipeline))
test_dataloader = dict(
    batch_size=50, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root, ann_file='dataset_demo.json', split='test',
                 mode='eval', pipeline=test_pipeline))
val_evaluator = dict(type='RetrievalRecall')
test_evaluator = dict(type='RetrievalRecall')
