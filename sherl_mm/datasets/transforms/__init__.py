
from .grounding import MDETR_MAX_SIZE, MDETR_SCALES, RandomSizeCrop, mdetr_train_resize_crop  # noqa: F401,E402
