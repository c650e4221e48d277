# Full fine-tuning baseline of sherl_clipvil_vqav2.py: every backbone parameter trains (the memory upper bound).
_base_ = ['./sherl_clipvil_vqav2.py']
model = dict(tuner=dict(_delete_=True, type='FullFineTune'))
