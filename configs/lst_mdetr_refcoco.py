# Ladder side-tuning baseline of sherl_mdetr_refcoco.py, reconstructed from LST's vision-language design
# (no author code exists for MDETR; docs/method.md): side encoder and decoder of width 256/8 with gated
# sigma(alpha/0.1) ladders from every layer, the side decoder cross-attending to the side encoder output.
# Same schedule as SHERL.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='LST', reduction=8))
