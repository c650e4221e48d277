"""A table of total / trainable parameters per module, printed when training starts."""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from sherl_mm.registry import HOOKS
from sherl_mm.tuners import parameter_report


def _count(params) -> tuple[int, int]:
    total = trainable = 0
    for p in params:
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return total, trainable


def parameter_rows(model: nn.Module, max_depth: int = 1) -> list[tuple[str, int, int]]:
    """``(name, total, trainable)`` for every module down to ``max_depth``
    levels below ``model`` (depth 1: its direct children), in definition
    order, plus ``'(own)'`` for parameters registered on ``model`` itself.
    A parameter shared by several modules is counted once in each of them."""
    rows = []
    own = _count(model.parameters(recurse=False))
    if own[0]:
        rows.append(('(own)', *own))

    def walk(module: nn.Module, prefix: str, depth: int) -> None:
        for name, child in module.named_children():
            full = f'{prefix}{name}'
            total, trainable = _count(child.parameters())
            if total == 0:
                continue
            rows.append((full, total, trainable))
            if depth < max_depth:
                walk(child, f'{full}.', depth + 1)

    walk(model, '', 1)
    return rows


def parameter_table(model: nn.Module, max_depth: int = 1) -> str:
    """A plain-text table of :func:`parameter_rows`, a total row, and PEFT's
    summary line (:func:`sherl_mm.tuners.parameter_report`)."""
    rows = parameter_rows(model, max_depth)
    total, trainable = _count(model.parameters())
    body = [(name, f'{t:,d}', f'{tr:,d}', f'{100.0 * tr / t:.2f}' if t else '-') for name, t, tr in rows]
    footer = ('TOTAL', f'{total:,d}', f'{trainable:,d}', f'{100.0 * trainable / total:.2f}' if total else '-')
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
        total, trainable = _count(model.parameters())
        runner.message_hub.update_info('params_total', total)
        runner.message_hub.update_info('params_trainable', trainable)
        runner.logger.info(f'Parameters of {type(model).__name__}:\n{parameter_table(model, self.max_depth)}')
