# Adapter baseline of sherl_clipvil_vqav2.py: a bottleneck adapter (width D/16) after every layer of the tuned stacks.
_base_ = ['./sherl_clipvil_vqav2.py']
model = dict(tuner=dict(_delete_=True, type='Adapter', reduction=16))
