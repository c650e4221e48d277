# UniPT baseline of sherl_vse_coco.py: its output (width d = 512, up-projected) replaces each stack's output.
_base_ = ['./sherl_vse_coco.py']
model = dict(tuner=dict(_delete_=True, type='UniPT', side_width=512))
