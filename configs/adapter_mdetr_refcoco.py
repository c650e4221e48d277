# Adapter baseline of sherl_mdetr_refcoco.py: a sequential bottleneck adapter (256 -> 16 -> 256, up-projection
# zero-initialised) after every encoder and decoder layer. Same schedule as SHERL.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='Adapter', reduction=16, placement='sequential'))
