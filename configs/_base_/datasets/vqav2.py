# VQAv2 (train2014 for training, val2014 for validation; test-dev has no answers and is scored by the server).
# Put the files here (relative to the working directory):
#   data/vqav2/v2_OpenEnded_mscoco_{train2014,val2014,test2015}_questions.json
#   data/vqav2/v2_mscoco_{train2014,val2014}_annotations.json
#   data/vqav2/images/{train2014,val2014,test2015}/COCO_<split>_<id>.jpg   (the COCO images)
# The answer vocabulary (normalised answers seen >= 9 times in the training annotations) is built on the
# first run and cached in data/vqav2/answer_vocab.json; CLIP-ViL/LXMERT's trainval_ans2label.json
# (3,129 answers) can be used instead by pointing answer_vocab at it.
# CLIP-ViL trains on train + "nominival" and validates on "minival" (LXMERT's split of val2014): use
# ConcatDataset or edit the files for that protocol.
dataset_type = 'VQAv2Dataset'
data_root = 'data/vqav2/'
image_size = 224

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(image_size, image_size), keep_ratio=False),
    dict(type='PackMultiModalInputs'),
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=32, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type=dataset_type, data_root=data_root,
                 question_file='v2_OpenEnded_mscoco_train2014_questions.json',
                 ann_file='v2_mscoco_train2014_annotations.json', answer_vocab='answer_vocab.json',
                 min_answer_count=9, data_prefix=dict(img_path='images/train2014/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=64, num_workers=8, persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type=dataset_type, data_root=data_root,
                 question_file='v2_OpenEnded_mscoco_val2014_questions.json',
                 ann_file='v2_mscoco_val2014_annotations.json', answer_vocab='answer_vocab.json',
                 vocab_ann_file='v2_mscoco_train2014_annotations.json', min_answer_count=9,
                 data_prefix=dict(img_path='images/val2014/'), pipeline=test_pipeline, test_mode=True))
test_dataloader = val_dataloader
val_evaluator = dict(type='VQAAccuracy')
test_evaluator = dict(type='VQAAccuracy')
