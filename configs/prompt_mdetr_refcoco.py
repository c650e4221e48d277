# Prompt-tuning baseline of sherl_mdetr_refcoco.py: 10 learned tokens prepended at the input of the DETR
# encoder and of the decoder (removed again before the heads). Same schedule as SHERL.
_base_ = ['./sherl_mdetr_refcoco.py']
model = dict(tuner=dict(_delete_=True, type='PromptTuning', num_tokens=10, mode='input'))
