
from .retrieval import RetrievalRecall, recall_metrics, retrieval_ranks  # noqa: F401,E402
from .vqa import VQAAccuracy, VQAExactMatch, normalize_answer, vqa_accuracy  # noqa: F401,E402
from .refexp import RefExpAccuracy, box_overlaps, refexp_hits  # noqa: F401,E402
