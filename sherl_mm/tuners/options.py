"""Tuner options as small dataclasses, validated once (as PEFT's ``LoraConfig``).

A tuner's config keeps its plain dict syntax::

    tuner=dict(type='SHERL', num_late_layers=1, mtsa=dict(reduction=2))

and the tuner turns the keyword options into its options dataclass with
:meth:`TunerOptions.parse` (``SHERLOptions``, whose ``mtsa`` is an
``MTSAConfig``). Every check that needs only the option values runs there,
once, and a bad value or name raises :class:`OptionError` naming the tuner,
the option's dotted path and what is valid::

    SHERL: mtsa.reduction=-2: must be a number > 0
    SHERL: num_late_layer: unknown option; did you mean 'num_late_layers'? ...

Checks that need the stack (layer indices, widths) run in the tuner's
constructor. :func:`bottleneck_width` is the one place a ``reduction`` option
becomes a width. See docs/tuners.md for each tuner's options.
"""
from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, Self

from .injection import targets_problem

#: a check returns what a valid value looks like when ``value`` is not one, else None
Check = Callable[[Any], 'str | None']


class OptionError(ValueError):
    """A tuner option with a bad value, or an unknown option name.

    ``path`` is the option's dotted name (``mtsa.reduction``), ``problem`` the
    rest of the message and ``owner`` the tuner whose options they are.
    """

    def __init__(self, path: str, problem: str = '', owner: str = '') -> None:
        self.path, self.problem, self.owner = path, problem, owner
        super().__init__(f'{owner}: {path}{problem}' if owner else f'{path}{problem}')

    def nested(self, parent: str) -> OptionError:
        """The same error for an option inside option ``parent``."""
        return OptionError(f'{parent}.{self.path}' if self.path else parent, self.problem, self.owner)

    def owned_by(self, owner: str) -> OptionError:
        return OptionError(self.path, self.problem, owner)


def option(default: Any, check: Check | None = None, *, parse: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field of a :class:`TunerOptions` with its ``default``:
    ``check`` validates its value (None passes where None is the default:
    'unset'); ``parse`` turns a config value into the field's type (a nested
    options dataclass) before the check."""
    return field(default=default, metadata=dict(check=check, parse=parse))


# ------------------------------------------------------------------ checks
def number(low: float | None = None, high: float | None = None, *, integer: bool = False,
           low_open: bool = False, high_open: bool = False) -> Check:
    """A number (an int with ``integer``; never a bool) in the given range."""
    kind = 'an integer' if integer else 'a number'
    bounds = []
    if low is not None:
        bounds.append(f'{">" if low_open else ">="} {low:g}')
    if high is not None:
        bounds.append(f'{"<" if high_open else "<="} {high:g}')
    wanted = f'must be {kind}' + (' ' + ' and '.join(bounds) if bounds else '')

    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return wanted
        if low is not None and (value < low or (low_open and value == low)):
            return wanted
        if high is not None and (value > high or (high_open and value == high)):
            return wanted
        return None
    return check


def one_of(*choices: Any) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f'must be one of {list(choices)}'
    return check


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else 'must be True or False'


def targets(value: Any) -> str | None:
    problem = targets_problem(value)
    return None if problem is None else f'must be {problem}'


def layer_indices(value: Any, allow_input: bool = False) -> str | None:
    """A layer index or a list of them (``'input'`` too with ``allow_input``);
    the range is checked against the stack by the tuner."""
    items = value if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, str) and allow_input and item == 'input':
            continue
        if isinstance(item, bool) or not isinstance(item, int):
            return ("entries must be layer indices or 'input'" if allow_input else
                    'must be a layer index or a list of layer indices')
    return None


def layers_or_input(value: Any) -> str | None:
    return layer_indices(value, allow_input=True)


# ------------------------------------------------------------------ the base class
@dataclass(frozen=True, kw_only=True)
class TunerOptions:
    """Base class of the options dataclasses.

    A subclass declares its options as fields made by :func:`option` (a
    default and a check) and cross-option rules in :meth:`check`. Values are
    validated when the dataclass is made, so an instance always holds valid
    options.
    """

    #: for an options class that a config picks by ``type`` (SHERL's
    #: ``late_tuner``): that type name, written back by :meth:`to_dict`
    kind: ClassVar[str | None] = None
    #: names that are not options because the owner sets them -> from what (for the error message)
    derived: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            parse = f.metadata.get('parse')
            if parse is not None and value is not None:
                try:
                    value = parse(value)
                except OptionError as err:
                    raise err.nested(f.name) from None
                object.__setattr__(self, f.name, value)
            check = f.metadata.get('check')
            optional = value is None and f.default is None          # None: 'unset' where that is the default
            problem = check(value) if check is not None and not optional else None
            if problem:
                raise OptionError(f.name, f'={value!r}: {problem}')
        self.check()

    def check(self) -> None:
        """Rules between options; raise :class:`OptionError` naming one of them."""

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | TunerOptions | None) -> Self:
        """Options from a config dict; errors carry no owner (see :meth:`parse`)."""
        if isinstance(values, cls):
            return values
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise OptionError('', f' must be a dict of options {cls.names()}, got {type(values).__name__}')
        names = cls.names()
        for key in values:
            if key in cls.derived:
                raise OptionError(str(key), f': is set from {cls.derived[key]}; remove it from the options')
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=3)
                hint = f'; did you mean {" or ".join(map(repr, close))}?' if close else ''
                raise OptionError(str(key), f': unknown option{hint} Valid options: {names}')
        return cls(**values)

    @classmethod
    def parse(cls, values: Mapping[str, Any] | TunerOptions | None, owner: str) -> Self:
        """Validated options of ``owner`` (a tuner's name, put in front of
        every error message) from its config values."""
        try:
            return cls.from_mapping(values)
        except OptionError as err:
            raise err.owned_by(owner) from None

    def to_dict(self) -> dict:
        """The options as a config dict (nested options as dicts, with their
        ``type`` when a config picks them by type)."""
        out: dict[str, Any] = {'type': self.kind} if self.kind else {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, TunerOptions) else copy.deepcopy(value)
        return out


@dataclass(frozen=True, kw_only=True)
class NormEvalOption(TunerOptions):
    """The option of every tuner that keeps its stack frozen around trainable modules.

    Attributes:
        norm_eval: keep the stack's normalisation layers with running
            statistics (BatchNorm) in eval mode in training: their statistics
            are frozen weights too. Default True.
    """

    norm_eval: bool = option(True, flag)


@dataclass(frozen=True, kw_only=True)
class LayerSelection(TunerOptions):
    """The options of a tuner whose side module aggregates layer outputs (SHERL, UniPT).

    Attributes:
        select_layers: layer indices (negative ones count from the end) and/or
            ``'input'`` (the input stage's output) whose outputs are
            aggregated. None: the input and every layer before the tuner's
            anchor.
        use_input: include the input stage's output (None: True when
            ``select_layers`` is None, else whether it lists ``'input'``).
    """

    select_layers: list[int | str] | None = option(None, layers_or_input)
    use_input: bool | None = option(None, flag)

    def check(self) -> None:
        super().check()
        listed = self.select_layers if isinstance(self.select_layers, (list, tuple)) else [self.select_layers]
        if self.use_input is False and 'input' in listed:
            raise OptionError('use_input', "=False but select_layers contains 'input'")


@dataclass(frozen=True, kw_only=True)
class SideWidthOption(TunerOptions):
    """The width of a tuner's side module, given directly or relative to the stack.

    Attributes:
        side_width: ``d``; or ``reduction``: ``d = D // reduction`` with ``D``
            the stack width the side module reads (default: the tuner's
            ``default_reduction``).
    """

    #: the reduction when neither option is given
    default_reduction: ClassVar[float] = 2

    side_width: int | None = option(None, number(1, integer=True))
    reduction: float | None = option(None, number(0, low_open=True))

    def check(self) -> None:
        super().check()
        exclusive(self, 'side_width', 'reduction')

    def side_width_for(self, width: int, owner: str, path: str = '') -> int:
        """``d`` for a stack width ``width`` (see :func:`bottleneck_width`)."""
        return bottleneck_width(width, self.side_width, self.reduction, self.default_reduction, owner, path)


def exclusive(options: TunerOptions, first: str, second: str) -> None:
    """Raise when both ``first`` and ``second`` are set (not None)."""
    a, b = getattr(options, first), getattr(options, second)
    if a is not None and b is not None:
        raise OptionError(first, f'={a!r} and {second}={b!r}: give {first} or {second}, not both')


def bottleneck_width(width: int, dim: int | None, reduction: float | None, default_reduction: float,
                     owner: str, path: str = '') -> int:
    """A side / bottleneck width: ``dim`` when given, else ``width // reduction``.

    A ``reduction`` the user gave must leave at least one channel; the error
    names ``owner`` and the option (``path`` in front: ``'mtsa.'``). Without
    one, ``default_reduction`` applies and a stack narrower than it still
    gets one channel.
    """
    if dim is not None:
        return int(dim)
    if reduction is None:
        return max(1, int(width // default_reduction))
    result = int(width // reduction)
    if result < 1:
        raise OptionError(f'{path}reduction', f'={reduction!r} leaves {width} // {reduction:g} = {result} channels '
                                              f'of the width {width}; valid: 0 < reduction <= {width}', owner)
    return result


__all__ = ['LayerSelection', 'NormEvalOption', 'OptionError', 'SideWidthOption', 'TunerOptions', 'bottleneck_width', 'exclusive', 'flag',
           'layer_indices', 'layers_or_input', 'number', 'one_of', 'option', 'targets']
