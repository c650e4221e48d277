# SHERL on MDETR for RefCOCO (the paper's Table 5 setting; docs/grounding.md, docs/method.md):
#   python tools/train.py configs/sherl_mdetr_refcoco.py              # 1 GPU, batch 4
#   bash tools/dist_train.sh configs/sherl_mdetr_refcoco.py 2         # the paper's 2 x 4
#   python tools/test.py configs/sherl_mdetr_refcoco.py work_dirs/sherl_mdetr_refcoco/epoch_10.pth
# Trainable: the encoder and decoder MTSA (232,450 each) and the heads at 0.1x lr: 696,200 in all.
# Needs data/refcoco/ (see configs/_base_/datasets/refcoco.py) and checkpoints/ (see
# configs/_base_/models/mdetr_r101.py). Siblings with the other tuners: {fullft,lora,adapter,bitfit,
# prompt,lst,unipt}_mdetr_refcoco.py; RefCOCO+ / RefCOCOg: sherl_mdetr_refcoco{p,g}.py.
_base_ = [
    './_base_/default_runtime.py', './_base_/datasets/refcoco.py', './_base_/models/mdetr_r101.py',
    './_base_/schedules/mdetr_refcoco_10e.py',
]
default_hooks = dict(checkpoint=dict(save_best='refexp_giou0.5/P@1', rule='greater', max_keep_ckpts=2))
