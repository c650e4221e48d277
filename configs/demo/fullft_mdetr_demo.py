# The full fine-tuning comparison of the grounding demo (tools/demo.py): the same transfer as
# sherl_mdetr_demo.py, with the whole grounding model trainable (encoder, decoder, projections, queries,
# heads) at one learning rate, from the same checkpoint, for the same epochs. The pretrained EfficientNet
# and MiniLM stay frozen, as in the source training, so that the comparison fits the demo's CPU budget
# (back-propagating through EfficientNet would make every step several times slower); their outputs
# come from the feature cache.
_base_ = ['./sherl_mdetr_demo.py']

model = dict(tuner=dict(_delete_=True, type='FullFineTune', targets=['encoder', 'decoder']))
optim_wrapper = dict(optimizer=dict(lr=1e-4, weight_decay=1e-4))
custom_hooks = [dict(type='FrozenFeatureCacheHook', stacks=['image', 'text'])]
