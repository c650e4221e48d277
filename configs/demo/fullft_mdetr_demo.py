# The full fine-tuning comparison of the grounding demo (tools/demo.py): the same transfer as
# sherl_mdetr_demo.py, with every parameter of the model trainable (the pretrained EfficientNet and
# MiniLM included) at one learning rate. Same data, schedule and initial checkpoint.
_base_ = ['./sherl_mdetr_demo.py']

model = dict(tuner=dict(_delete_=True, type='FullFineTune'))
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-4), paramwise_cfg=dict(_delete_=True))
