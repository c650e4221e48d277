# LoRA baseline of sherl_clip_flickr30k.py: rank-8 updates on the q/v parts of every attention of both towers.
_base_ = ['./sherl_clip_flickr30k.py']
model = dict(tuner=dict(_delete_=True, type='LoRA', rank=8, alpha=16))
