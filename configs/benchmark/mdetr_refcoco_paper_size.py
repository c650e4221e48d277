# configs/sherl_mdetr_refcoco.py at the paper's sizes with random weights and a synthetic batch, so that
# tools/analysis/benchmark_tuners.py measures memory and speed without RefCOCO, RoBERTa or MDETR's
# checkpoint: ResNet-101 (frozen BN), RoBERTa-base built from its config (the MiniLM tokenizer stands in
# for RoBERTa's; token ids only index the embedding), 6 + 6 DETR layers of width 256, 100 queries, images
# at MDETR's test scale (800 x 1066).
#   python tools/analysis/benchmark_tuners.py configs/benchmark/mdetr_refcoco_paper_size.py --batch-size 2
_base_ = ['../sherl_mdetr_refcoco.py', '../_base_/models/minilm.py']

model = dict(
    mdetr_checkpoint=None,
    text_encoder=dict(_delete_=True, type='HFEncoderStack', tokenizer={{_base_.minilm_dir}}, config=dict(
        model_type='roberta', vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
        layer_norm_eps=1e-5)))
benchmark = dict(batch='synthetic')
