# Adapter baseline of sherl_vse_coco.py: a bottleneck adapter (width D/16) after every layer of the tuned stacks.
_base_ = ['./sherl_vse_coco.py']
model = dict(tuner=dict(_delete_=True, type='Adapter', reduction=16))
