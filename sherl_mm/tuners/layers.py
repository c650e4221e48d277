"""What tuners read of a stack besides its route: layer widths and the
layers whose outputs a side module aggregates."""
from __future__ import annotations

from typing import Sequence

from sherl_mm.backbones.base import BackboneStack

#: in a ``select_layers`` list: the input stage's output
INPUT = 'input'


def stack_widths(stack: BackboneStack, tuner: str) -> tuple[int, list[int]]:
    """``(input width, [width of layer i's output])``, or an error naming ``tuner``."""
    try:
        input_width, widths = int(stack.input_width), [int(w) for w in stack.widths]
    except NotImplementedError as err:
        raise ValueError(f'{tuner} needs the widths of {type(stack).__name__} (input_width and widths), which it '
                         f'does not define ({err})') from err
    if len(widths) != stack.num_layers:
        raise ValueError(f'{tuner}: {type(stack).__name__}.widths lists {len(widths)} widths for '
                         f'{stack.num_layers} layers')
    return input_width, widths


def resolve_selection(stack: BackboneStack, select_layers: Sequence[int | str] | int | str | None,
                      use_input: bool | None, limit: int) -> tuple[bool, list[int]]:
    """``(use_input, sorted layer indices)`` from ``select_layers`` / ``use_input``.

    ``select_layers=None`` selects every layer before ``limit`` and, unless
    ``use_input=False``, the input stage's output. In a list, the string
    ``'input'`` selects the input stage's output; integers are layer indices
    (negative ones count from the end, as everywhere in sherl_mm). The options
    (:class:`~sherl_mm.tuners.options.LayerSelection`) have checked the entries'
    types and that ``use_input`` agrees; the range is checked here.
    """
    if select_layers is None:
        return (True if use_input is None else bool(use_input)), list(range(limit))
    items = [select_layers] if isinstance(select_layers, (int, str)) else list(select_layers)
    wants_input = INPUT in items
    indices = sorted({stack.check_layer_index(int(i), 'select_layers') for i in items if i != INPUT})
    return (wants_input if use_input is None else bool(use_input)), indices


def check_output_width(tuner: str, out_channels: int | None, width: int, finalize_output: bool) -> int:
    """The side output's width: ``out_channels`` or the last layer's ``width``.
    The stack's output stage expects ``width``, so another width is refused
    unless the output stage is skipped."""
    if out_channels is not None and out_channels != width and finalize_output:
        raise ValueError(f"{tuner}: out_channels={out_channels} differs from the stack's last layer width {width}, "
                         f'which its output stage expects; set finalize_output=False to return the side output')
    return out_channels or width


__all__ = ['INPUT', 'check_output_width', 'resolve_selection', 'stack_widths']
