# UniPT baseline of sherl_mdetr_refcoco.py: the generic UniPT module (METHOD.md §3.1, d = 128) on the DETR
# encoder and decoder, whose output replaces each stack's output. UniPT's weight decay is 1e-4
# (METHOD.md §3.2); the rest of the schedule is SHERL's.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='UniPT', reduction=2))
optim_wrapper = dict(optimizer=dict(weight_decay=1e-4))
