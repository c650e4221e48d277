"""Image-text retrieval: VSE∞-style and CLIP dual encoders."""
from .base import DualEncoderRetrieval
from .clip import CLIP_PREPROCESSOR, CLIPRetrieval
from .losses import HingeTripletLoss, MaxViolationSchedule, info_nce
from .pooling import GPO, MeanPooling
from .vse import IMAGENET_PREPROCESSOR, VSERetrieval

__all__ = ['CLIPRetrieval', 'CLIP_PREPROCESSOR', 'DualEncoderRetrieval', 'GPO', 'HingeTripletLoss',
           'IMAGENET_PREPROCESSOR', 'MaxViolationSchedule', 'MeanPooling', 'VSERetrieval', 'info_nce']
