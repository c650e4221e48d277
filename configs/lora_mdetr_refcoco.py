# LoRA baseline of sherl_mdetr_refcoco.py: rank-8 updates (alpha 16) on the query / key / value / output
# projections of every attention of the DETR encoder and decoder; backbone and text encoder frozen.
# Same schedule as SHERL (lr 5e-4, heads 5e-5).
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='LoRA', rank=8, alpha=16))
