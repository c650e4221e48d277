# LoRA baseline of sherl_clipvil_vqav2.py: rank-8 updates on the cross-modal BERT's query/value projections.
_base_ = ['./sherl_clipvil_vqav2.py']
model = dict(tuner=dict(_delete_=True, type='LoRA', rank=8, alpha=16))
