# A small MDETR-like grounding model on the two real pretrained backbones that install from the package
# registries: EfficientNet-Lite0 (ImageNet; a 1280-channel map at stride 32) and
# all-MiniLM-L6-v2 (6 layers, width 384). The transformer keeps MDETR's structure (6 encoder and 6
# decoder post-norm layers, early image-text concatenation, soft-token / box / contrastive-align heads)
# at width 64, so that SHERL's MDETR placement (encoder layers {0,1,3,5}, decoder {0,2,3,4} + the last
# decoder layer) applies unchanged. No dropout: the demo trains for minutes, not epochs of COCO.
# Used by configs/demo/*mdetr_demo*.py.
_base_ = ['./minilm.py']

embed_dims = 64
model = dict(
    type='MDETRGrounding',
    image_backbone=dict(type='EfficientNetStack', pretrained=True, drop_connect_rate=0.0),
    text_encoder=dict(type='HFEncoderStack', pretrained={{_base_.minilm_dir}}),
    encoder=dict(type='DetrEncoderStack', num_layers=6, embed_dims=embed_dims, num_heads=4,
                 feedforward_channels=256, dropout=0.0),
    decoder=dict(type='DetrDecoderStack', num_layers=6, embed_dims=embed_dims, num_heads=4,
                 feedforward_channels=256, dropout=0.0),
    embed_dims=embed_dims,
    text_dropout=0.0,
    num_queries=10,
    num_tokens=32,
    contrastive_align_loss=True, contrastive_dim=32, temperature=0.07, eos_coef=0.1,
    aux_loss=True,
    text_padding='max_length',   # fixed shapes (32 - 1 text tokens), so the frozen routes can be cached
    tuner=dict(type='SHERL',
               per_stack=dict(encoder=dict(select_layers=[0, 1, 3, 5], num_late_layers=0),
                              decoder=dict(select_layers=[0, 2, 3, 4], num_late_layers=1))),
    test_cfg=dict(max_per_img=10),
    # EfficientNet-Lite's own normalisation: (x - 127.5) / 127.5 on RGB
    data_preprocessor=dict(type='DetDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3, bgr_to_rgb=True,
                           pad_size_divisor=32),
)
