"""The check that a checkpoint given to tools/test.py fits the model."""
from mmengine.hooks import Hook

from sherl_mm.registry import HOOKS

from ..validate import check_checkpoint_compat

__all__ = ['CheckpointCompatHook']


@HOOKS.register_module()
class CheckpointCompatHook(Hook):
    """Checks the checkpoint loaded by the Runner (``load_from``) against the
    model before the weights are copied in (``after_load_checkpoint`` runs
    first), without reading the file twice; a checkpoint of another model is
    a :class:`~sherl_mm.engine.validate.UserInputError` naming the file and
    the mismatched keys. ``tools/test.py`` registers it; resuming is not
    checked.

    Args:
        filename: the checkpoint's path, for the message.
    """

    priority = 'VERY_HIGH'

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            check_checkpoint_compat(runner.model, checkpoint, self.filename)
