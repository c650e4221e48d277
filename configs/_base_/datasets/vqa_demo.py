# The VQA demo data, built from package-shipped images with
#   python tools/data/make_vqa_demo.py                (writes data/demo_vqa/)
# 500 training and 100 validation scenes, ~5 questions each (counting, colour, existence, position),
# 10 simulated human answers per question, in the VQAv2 format.
dataset_type = 'VQAv2Dataset'
data_root = 'data/demo_vqa/'

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackMultiModalInputs'),  # 128 x 128 images; no flip: questions ask left/right
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=32, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 question_file='v2_OpenEnded_mscoco_demo_train_questions.json',
                 ann_file='v2_mscoco_demo_train_annotations.json', answer_vocab='answer_vocab.json',
                 data_prefix=dict(img_path='images/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 question_file='v2_OpenEnded_mscoco_demo_val_questions.json',
                 ann_file='v2_mscoco_demo_val_annotations.json', answer_vocab='answer_vocab.json',
                 data_prefix=dict(img_path='images/'), pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='VQAAccuracy')
test_evaluator = dict(type='VQAAccuracy')
