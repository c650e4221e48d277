# Step 2 of the grounding demo (tools/demo.py): SHERL transfer of the source-trained model
# (mdetr_demo_source.py) to the demo's *target* task, whose expressions need size, position and spatial
# relations ("the big dog face", "the fish left of the yellow banana"). As in the paper's MDETR setting,
# everything pre-trained is frozen (EfficientNet, MiniLM, projections, queries, the 6+6 transformer
# layers); MTSA on encoder layers {0,1,3,5} and decoder layers {0,2,3,4} trains, the frozen last decoder
# layer regulates its output, and the heads train too (at the same lr: the paper's 0.1x is for 10 epochs
# of RefCOCO from a converged MDETR, this is minutes from a small model). The whole early route (image and text
# encoders, the encoder, decoder layers 0-4) is frozen, so from the second epoch on EarlyRouteCacheHook
# serves it from disk and a step runs only MTSA, the last decoder layer and the heads.
#   python tools/train.py configs/demo/mdetr_demo_source.py      (step 1, writes the checkpoint below)
#   python tools/train.py configs/demo/sherl_mdetr_demo.py
_base_ = ['../_base_/default_runtime.py', '../_base_/datasets/grounding_demo.py',
          '../_base_/models/mdetr_demo.py']

load_from = 'work_dirs/mdetr_demo_source/epoch_60.pth'
train_dataloader = dict(dataset=dict(pipeline={{_base_.test_pipeline}}))
optim_wrapper = dict(type='OptimWrapper', constructor='TrainableOptimWrapperConstructor',
                     optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0), clip_grad=dict(max_norm=0.1))
max_epochs = 30
param_scheduler = [dict(type='MultiStepLR', by_epoch=True, milestones=[int(max_epochs * 0.8)], gamma=0.1)]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
custom_hooks = [dict(type='EarlyRouteCacheHook')]
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
