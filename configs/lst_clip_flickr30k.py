# Ladder side-tuning baseline of sherl_clip_flickr30k.py: a side transformer of width D/8 on each tower.
_base_ = ['./sherl_clip_flickr30k.py']
model = dict(tuner=dict(_delete_=True, type='LST', reduction=8))
