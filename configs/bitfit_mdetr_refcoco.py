# BitFit baseline of sherl_mdetr_refcoco.py: only the bias terms (and LayerNorm biases) of the DETR encoder
# and decoder train. Same schedule as SHERL.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='BitFit', include_norm_bias=True))
