# RefCOCOg (UMD splits: train / val / test; longer expressions): same layout as refcoco.py,
# data/refcoco/mdetr_annotations/finetune_refcocog_{train,val,test}.json.
_base_ = './refcoco.py'

ann_prefix = 'mdetr_annotations/finetune_refcocog'
refexp_dataset_name = 'refcocog'

train_dataloader = dict(dataset=dict(ann_file=ann_prefix + '_train.json',
                                     metainfo=dict(dataset_name=refexp_dataset_name)))
val_dataloader = dict(dataset=dict(ann_file=ann_prefix + '_val.json',
                                   metainfo=dict(dataset_name=refexp_dataset_name)))
test_dataloader = dict(dataset=dict(type='ConcatDataset', _delete_=True, datasets=[
    dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}}, ann_file=ann_prefix + f'_{split}.json',
         data_prefix=dict(img='train2014/'), metainfo=dict(dataset_name=refexp_dataset_name),
         test_mode=True, pipeline={{_base_.test_pipeline}})
    for split in ('val', 'test')]))
