# Ladder side-tuning baseline of sherl_clipvil_vqav2.py, as LST's CLIP-ViL script: r = 4, bias-free projections.
_base_ = ['./sherl_clipvil_vqav2.py']
model = dict(tuner=dict(_delete_=True, type='LST', reduction=4, bias=False))
