# Step 3 of the grounding demo (tools/demo.py, its default SHERL): SHERL on the *text encoder*. The target
# task names the emoji in words the source model never read ("a puppy", "the desert plant"); what has to
# change is how those words are read, so SHERL goes where they are read: MTSA over MiniLM's embedding
# output and layers 0-4, the frozen MiniLM layer 5 regulating its output. EfficientNet, the projections
# and the whole fusion transformer stay frozen; the transformer runs with a graph (no weight of it trains),
# since the text features it fuses now depend on MTSA. The heads train too.
# Why not the paper's MDETR placement (sherl_mdetr_demo.py: MTSA on the fusion transformer)? There the
# words meet the image in the transformer's early layers, which SHERL's route computes without a graph;
# MTSA mixes each token's layers, not tokens, so an unread word cannot be bound to a picture there.
# The price: the graph through the transformer, which the paper's placement does not keep. Both
# placements and MTSA widths, as measured on the demo task: docs/investigations.md.
# MTSA starts at the pre-trained model (zero_up, see sherl_mdetr_demo.py).
#   python tools/train.py configs/demo/mdetr_demo_source.py      (step 1, writes the checkpoint)
#   python tools/train.py configs/demo/sherl_text_mdetr_demo.py
_base_ = ['./sherl_mdetr_demo.py']

model = dict(tuner=dict(_delete_=True, type='SHERL', targets=['text'],
                        mtsa=dict(reduction=4, zero_up=True, alpha_init=2.0)))
# the frozen image stack and MiniLM's early route come from the cache; the transformer's input now
# depends on trained parameters, so it is computed every step
custom_hooks = [dict(type='FrozenFeatureCacheHook', stacks=['image', 'text'])]
