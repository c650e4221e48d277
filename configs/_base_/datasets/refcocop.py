# RefCOCO+ (UNC splits; no location words in the expressions): same layout as refcoco.py,
# data/refcoco/mdetr_annotations/finetune_refcoco+_{train,val,testA,testB}.json.
_base_ = './refcoco.py'

ann_prefix = 'mdetr_annotations/finetune_refcoco+'
refexp_dataset_name = 'refcoco+'

train_dataloader = dict(dataset=dict(ann_file=ann_prefix + '_train.json',
                                     metainfo=dict(dataset_name=refexp_dataset_name)))
val_dataloader = dict(dataset=dict(ann_file=ann_prefix + '_val.json',
                                   metainfo=dict(dataset_name=refexp_dataset_name)))
test_dataloader = dict(dataset=dict(type='ConcatDataset', _delete_=True, datasets=[
    dict(type={{_base_.dataset_type}}, data_root={{_base_.data_root}}, ann_file=ann_prefix + f'_{split}.json',
         data_prefix=dict(img='train2014/'), metainfo=dict(dataset_name=refexp_dataset_name),
         test_mode=True, pipeline={{_base_.test_pipeline}})
    for split in ('val', 'testA', 'testB')]))
