# LoRA baseline of sherl_vse_coco.py: rank-8 updates on BERT's query/value projections and on the 1x1
# convolutions of the ResNeXt blocks (its grouped 3x3 convolutions are not LoRA targets).
_base_ = ['./sherl_vse_coco.py']
model = dict(tuner=dict(_delete_=True, type='LoRA', rank=8, alpha=16,
                        per_stack=dict(image=dict(target_modules=r'layers\.\d+\.conv[13]'))))
