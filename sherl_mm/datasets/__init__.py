
from .karpathy import AnnotationError, KarpathyRetrievalDataset, PackMultiModalInputs  # noqa: F401,E402
from .vqa import GQADataset, VQAv2Dataset  # noqa: F401,E402
from .refcoco import GROUNDING_META_KEYS, RefCOCODataset  # noqa: F401,E402
from . import transforms  # noqa: F401,E402  (registers the grounding transforms)
