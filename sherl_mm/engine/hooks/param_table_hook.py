"""A table of total / trainable parameters per module, printed when training starts."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from sherl_mm.registry import HOOKS
from sherl_mm.tuners import parameter_report
from sherl_mm.utils.modules import ParameterCount, count_parameters

__all__ = ['ParameterTableHook', 'parameter_rows', 'parameter_table']


def parameter_rows(model: nn.Module, max_depth: int = 1) -> list[tuple[str, int, int]]:
    """``(name, total, trainable)`` for every module down to ``max_depth``
    levels below ``model`` (depth 1: its direct children), in definition
    order, plus ``'(own)'`` for parameters registered on ``model`` itself.
    A parameter shared by several modules is counted once in each of them."""
    rows = []
    own = count_parameters(nn.ParameterList(model.parameters(recurse=False)))  # not its children's
    if own.total:
        rows.append(('(own)', *own))

    def walk(module: nn.Module, prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            full = f'{prefix}{name}'
            count = count_parameters(child)
            if count.total == 0:
                continue
            rows.append((full, *count))
            if depth < max_depth:
                walk(child, f'{full}.', depth + 1)

    walk(model, '', 1)
    return rows


def parameter_table(model: nn.Module, max_depth: int = 1) -> str:
    """A plain-text table of :func:`parameter_rows`, a total row, and PEFT's
    summary line (:func:`sherl_mm.tuners.parameter_report`)."""
    rows = parameter_rows(model, max_depth)
    counts = [(name, ParameterCount(total, trainable)) for name, total, trainable in rows]
    counts.append(('TOTAL', count_parameters(model)))
    cells = [(name, f'{c.total:,d}', f'{c.trainable:,d}', f'{c.share:.2f}' if c.total else '-') for name, c in counts]
    body, footer = cells[:-1], cells[-1]
    header = ('module', 'params', 'trainable', 'trainable %')
    widths = [max(len(r[i]) for r in body + [header, footer]) for i in range(4)]

    def fmt(row):
        return '  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = '-' * (sum(widths) + 2 * 3)
    lines = [fmt(header), rule] + [fmt(r) for r in body] + [rule, fmt(footer), parameter_report(model)]
    return '\n'.join(lines)


@HOOKS.register_module()
class ParameterTableHook(Hook):
    """Print, before training, the total and trainable parameters of every
    top-level module of the model (``max_depth=2`` adds their children) and
    PEFT's ``trainable params: X || all params: Y || trainable%: Z`` line.

    It also stores the counts in the message hub (``runner.message_hub``
    info keys ``params_total`` and ``params_trainable``).

    Config::

        custom_hooks = [dict(type='ParameterTableHook')]
    """

    priority = 'LOW'

    def __init__(self, max_depth: int = 1) -> None:
        if max_depth < 1:
            raise ValueError(f'ParameterTableHook: max_depth must be >= 1, got {max_depth}')
        self.max_depth = max_depth

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        count = count_parameters(model)
        runner.message_hub.update_info('params_total', count.total)
        runner.message_hub.update_info('params_trainable', count.trainable)
        runner.logger.info(f'Parameters of {type(model).__name__}:\n{parameter_table(model, self.max_depth)}')
