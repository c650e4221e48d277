"""sherl_mm: memory-efficient transfer learning of large pre-trained models on
the OpenMMLab stack (SHERL, ECCV 2024; UniPT, CVPR 2024; and PETL baselines)."""
__version__ = '0.1.0'


def register_all_modules(init_default_scope: bool = True) -> None:
    """Import every module that registers components (the ``locations`` of
    all registries in :mod:`sherl_mm.registry`), and (by default) make
    ``sherl_mm`` the default registry scope, as mmdet's
    ``register_all_modules`` does. Configs with ``default_scope='sherl_mm'``
    do not need it: the registries import their locations lazily."""
    from mmengine.registry import DefaultScope, Registry

    from sherl_mm import registry

    for value in vars(registry).values():
        if isinstance(value, Registry):
            value.import_from_location()
    if init_default_scope:
        if DefaultScope.get_current_instance() is None or \
                DefaultScope.get_current_instance().scope_name != 'sherl_mm':
            DefaultScope.get_instance(f'sherl_mm-{id(register_all_modules)}', scope_name='sherl_mm')
