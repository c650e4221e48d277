# Full fine-tuning baseline of sherl_clip_flickr30k.py: every backbone parameter trains (the memory upper bound).
_base_ = ['./sherl_clip_flickr30k.py']
model = dict(tuner=dict(_delete_=True, type='FullFineTune'))
