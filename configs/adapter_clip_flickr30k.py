# Adapter baseline of sherl_clip_flickr30k.py: a bottleneck adapter (width D/16) after every layer of the tuned stacks.
_base_ = ['./sherl_clip_flickr30k.py']
model = dict(tuner=dict(_delete_=True, type='Adapter', reduction=16))
