# Ladder side-tuning baseline of sherl_vse_coco.py: side networks of width D/8 (a conv ladder on the CNN,
# a transformer ladder on BERT), gated sigma(alpha/0.1) ladders from every layer.
_base_ = ['./sherl_vse_coco.py']
model = dict(tuner=dict(_delete_=True, type='LST', reduction=8))
