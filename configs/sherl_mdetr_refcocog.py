# SHERL on MDETR for RefCOCOg (umd splits: val / test): sherl_mdetr_refcoco.py on other annotation files.
_base_ = ['./_base_/default_runtime.py', './_base_/datasets/refcocog.py', './_base_/models/mdetr_r101.py',
          './_base_/schedules/mdetr_refcoco_10e.py']
default_hooks = dict(checkpoint=dict(save_best='refexp_giou0.5/P@1', rule='greater', max_keep_ckpts=2))
