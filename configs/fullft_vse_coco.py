# Full fine-tuning baseline of sherl_vse_coco.py: every backbone parameter trains (the memory upper bound).
_base_ = ['./sherl_vse_coco.py']
model = dict(tuner=dict(_delete_=True, type='FullFineTune'))
