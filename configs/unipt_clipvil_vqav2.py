# UniPT baseline of sherl_clipvil_vqav2.py: its output (width d = D/2, up-projected) replaces the stack's output.
_base_ = ['./sherl_clipvil_vqav2.py']
model = dict(tuner=dict(_delete_=True, type='UniPT', reduction=2))
