# UniPT baseline of sherl_clip_flickr30k.py: its output (width d = D/2, up-projected) replaces the stack's output.
_base_ = ['./sherl_clip_flickr30k.py']
model = dict(tuner=dict(_delete_=True, type='UniPT', reduction=2))
