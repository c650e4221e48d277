# The "source" variant of the grounding demo (name grounding: 2-4 emoji of different kinds per
# image, "the banana", "a green frog face"): the data a grounding model is pre-trained on before
# the SHERL transfer to grounding_demo.py (target). Same splits and sizes; built by
#   python tools/data/make_grounding_demo.py          (writes data/demo_grounding/{source,target}/)
_base_ = './grounding_demo.py'

data_root = 'data/demo_grounding/source/'
demo_variant = 'source'

train_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(dataset_name=f'demo_{demo_variant}')))
val_dataloader = dict(dataset=dict(data_root=data_root, metainfo=dict(dataset_name=f'demo_{demo_variant}')))
test_dataloader = dict(dataset=dict(type='ConcatDataset', _delete_=True, datasets=[
    dict(type={{_base_.dataset_type}}, data_root=data_root, ann_file=f'finetune_refcoco_{split}.json',
         data_prefix=dict(img='images/'), metainfo=dict(dataset_name=f'demo_{demo_variant}'),
         test_mode=True, pipeline={{_base_.test_pipeline}})
    for split in ('val', 'testA', 'testB')]))
