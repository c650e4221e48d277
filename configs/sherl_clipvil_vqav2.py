# SHERL on CLIP-ViL (VQAv2), as in the authors' CLIP-ViL code (docs/vqa.md): a frozen CLIP image encoder
# gives grid features, projected and concatenated with the question's BERT embeddings, through a 12-layer
# single-stream BERT (VisualBERT style). SHERL: MTSA (CLIP-ViL variant, Eq. 1 down-projection, d = 768/2)
# over the joint input and layers 0..10, late regulation of layer 11; trained: MTSA + logit_fc.
# BCE on soft scores (x num_answers), AdamW 5e-4 with 5% linear warm-up then linear decay, 5 epochs,
# batch 32 x 8 accumulation steps per GPU (the authors used 4 GPUs).
#
# Differences from the authors' setup, said plainly:
#  * image encoder: OpenCLIP ViT-B/32 patch tokens (7x7 at 224 px); the authors use CLIP RN50x4 grid features,
#    which sherl_mm's OpenCLIP stack (ViT towers only) does not wrap;
#  * the authors start from their vision-language pretrained CLIP-ViL checkpoint, where the visual
#    projection (visn_fc) is pretrained and stays frozen. From a text-only BERT the projection is random:
#    under SHERL the input stage runs without grad, so it stays a fixed random projection (train_glue left
#    at its default: glue trained only by tuners that train the backbone, e.g. the fullft sibling).
#    Load a vision-language checkpoint with load_from=... when you have one.
#
# Pretrained weights (local files; nothing is downloaded at run time):
#   checkpoints/open_clip_vit_b32.bin     OpenCLIP ViT-B-32 weights (see sherl_clip_flickr30k.py)
#   checkpoints/bert-base-uncased/       config.json, model.safetensors and the tokenizer files
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/vqav2.py']

model = dict(
    type='CLIPViLVQA',
    image_encoder=dict(type='OpenCLIPVisionStack', model_name='ViT-B-32',
                       pretrained='checkpoints/open_clip_vit_b32.bin', output='tokens'),
    cross_encoder=dict(type='VisualBertStack', pretrained='checkpoints/bert-base-uncased', visual_dim=768,
                       num_visual_positions=49),
    # the datasets' vocabulary: built from the training annotations on the first run, then cached
    answer_vocab=dict(file='data/vqav2/answer_vocab.json',
                      ann_file='data/vqav2/v2_mscoco_train2014_annotations.json', min_count=9),
    max_question_length=20,
    data_preprocessor=dict(type='ImgDataPreprocessor', mean=[122.7709383, 116.7460125, 104.09373615],
                           std=[68.5005327, 66.6321579, 70.32316305], bgr_to_rgb=True),
    tuner=dict(
        type='SHERL', targets=['cross'], num_late_layers=1, select_layers=None,
        mtsa=dict(variant='clipvil', reduction=2)),
)

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.01),
                     accumulative_counts=8)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=0.25, convert_to_iter_based=True),
    dict(type='LinearLR', start_factor=1.0, end_factor=0.0, by_epoch=True, begin=0.25, end=5,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=5, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(checkpoint=dict(save_best='vqa/accuracy', rule='greater', max_keep_ckpts=2))
