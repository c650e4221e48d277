"""Visual question answering: CLIP-ViL-style single-stream model."""
from .clipvil import AnswerHead, CLIPViLVQA
from .cross_modal import VisualBertStack

__all__ = ['AnswerHead', 'CLIPViLVQA', 'VisualBertStack']
