# MDETR-like grounding model at the paper's sizes (docs/grounding.md; MDETR's defaults):
# ResNet-101 (frozen BN) + 1x1 input projection; RoBERTa-base + resizer 768 -> 256; image and text
# tokens concatenated into a 6-layer post-norm DETR encoder (D = 256, 8 heads, FFN 2048, dropout 0.1);
# a 6-layer decoder over 100 learned queries; soft-token (256 positions, the last = no object), box
# and contrastive-align (64-d, tau 0.07) heads; Hungarian matching (class 1, L1 5, GIoU 2).
#
# Pretrained weights (local files; nothing is downloaded at run time):
#   checkpoints/roberta-base/        config.json, model.safetensors (or pytorch_model.bin) and the
#                                    tokenizer files (huggingface-cli download roberta-base --local-dir ...)
#   checkpoints/mdetr/pretrained_resnet101_checkpoint.pth
#                                    MDETR's pre-trained model (github.com/ashkamath/mdetr, "pre-training"
#                                    table, ResNet-101); its model_ema entry is loaded through the key map
#                                    of sherl_mm/models/grounding/checkpoint.py and the missing / unexpected
#                                    keys are logged. Without it, set model.mdetr_checkpoint=None and give
#                                    the image stack torchvision ResNet-101 weights with
#                                    model.image_backbone.pretrained=checkpoints/resnet101.pth.
embed_dims = 256
model = dict(
    type='MDETRGrounding',
    image_backbone=dict(type='ResNetStack', depth=101),
    text_encoder=dict(type='HFEncoderStack', pretrained='checkpoints/roberta-base'),
    encoder=dict(type='DetrEncoderStack', num_layers=6, embed_dims=embed_dims, num_heads=8,
                 feedforward_channels=2048, dropout=0.1),
    decoder=dict(type='DetrDecoderStack', num_layers=6, embed_dims=embed_dims, num_heads=8,
                 feedforward_channels=2048, dropout=0.1),
    embed_dims=embed_dims,
    num_queries=100,
    num_tokens=256,
    contrastive_align_loss=True, contrastive_dim=64, temperature=0.07, eos_coef=0.1,
    aux_loss=True,
    mdetr_checkpoint='checkpoints/mdetr/pretrained_resnet101_checkpoint.pth',
    mdetr_checkpoint_ema=True,
    # SHERL as in the authors' MDETR code: MTSA on encoder layers {0,1,3,5} (no encoder layer is
    # re-run: its output is the memory of the late decoder layer) and decoder layers {0,2,3,4};
    # late regulation = the frozen last decoder layer.
    tuner=dict(type='SHERL',
               per_stack=dict(encoder=dict(select_layers=[0, 1, 3, 5], num_late_layers=0),
                              decoder=dict(select_layers=[0, 2, 3, 4], num_late_layers=1))),
    test_cfg=dict(max_per_img=100),
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_size_divisor=1),
)
