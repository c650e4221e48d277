
from .grounding import MDETRGrounding, MDETRHead, SoftTokenCost  # noqa: F401
from .retrieval import CLIPRetrieval, VSERetrieval  # noqa: F401,E402
from .vqa import CLIPViLVQA, VisualBertStack  # noqa: F401,E402
