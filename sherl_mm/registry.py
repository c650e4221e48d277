"""The registries of sherl_mm.

Each is a child of the matching mmdet registry, so that configs with
``default_scope='sherl_mm'`` find sherl_mm's own components and everything
mmdet and mmengine register (hooks, transforms, metrics, optimizers ...).
A registry's ``locations`` are the modules that register into it, and only
those; the Runner imports them when it first looks a name up, so a config
needs no ``custom_imports`` for sherl_mm's components. Registries that
sherl_mm fills with nothing exist for the scope lookup alone and list only
mmdet's locations. tests/test_registry.py checks from a fresh interpreter
that every registered name is found this way.
"""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry

_SCOPE = 'sherl_mm'


def _child(name: str, parent: Registry, locations: tuple[str, ...] = ()) -> Registry:
    # A registry imports only its own locations, never its parent's: list
    # mmdet's too so that e.g. ``type='ResNet'`` resolves without an import.
    return Registry(name, parent=parent, scope=_SCOPE, locations=[*locations, *parent._locations])


# runner, loops, optimizers and schedulers: mmengine's and mmdet's, plus
# sherl_mm's optimizer wrapper and constructor
RUNNERS = _child('runner', mmdet_registry.RUNNERS)
RUNNER_CONSTRUCTORS = _child('runner constructor', mmdet_registry.RUNNER_CONSTRUCTORS)
LOOPS = _child('loop', mmdet_registry.LOOPS)
HOOKS = _child('hook', mmdet_registry.HOOKS, ('sherl_mm.engine.hooks',))
LOG_PROCESSORS = _child('log_processor', mmdet_registry.LOG_PROCESSORS)
OPTIMIZERS = _child('optimizer', mmdet_registry.OPTIMIZERS)
OPTIM_WRAPPERS = _child('optim_wrapper', mmdet_registry.OPTIM_WRAPPERS, ('sherl_mm.engine.optim',))
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor', mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS,
                                    ('sherl_mm.engine.optim',))
PARAM_SCHEDULERS = _child('parameter scheduler', mmdet_registry.PARAM_SCHEDULERS)
# data
DATASETS = _child('dataset', mmdet_registry.DATASETS, ('sherl_mm.datasets',))
DATA_SAMPLERS = _child('data sampler', mmdet_registry.DATA_SAMPLERS)
TRANSFORMS = _child('transform', mmdet_registry.TRANSFORMS, ('sherl_mm.datasets',))
# models
MODELS = _child('model', mmdet_registry.MODELS, ('sherl_mm.models', 'sherl_mm.tuners'))
MODEL_WRAPPERS = _child('model_wrapper', mmdet_registry.MODEL_WRAPPERS)
WEIGHT_INITIALIZERS = _child('weight initializer', mmdet_registry.WEIGHT_INITIALIZERS)
TASK_UTILS = _child('task util', mmdet_registry.TASK_UTILS, ('sherl_mm.models',))
# evaluation and visualisation
METRICS = _child('metric', mmdet_registry.METRICS, ('sherl_mm.evaluation',))
EVALUATOR = _child('evaluator', mmdet_registry.EVALUATOR)
VISUALIZERS = _child('visualizer', mmdet_registry.VISUALIZERS)
VISBACKENDS = _child('vis_backend', mmdet_registry.VISBACKENDS)

# Roots of their own (not children of MODELS, whose child slot for this scope
# is taken): their components build nn.Modules and may nest MODELS configs.
# A frozen pre-trained network exposed as an ordered stack of layers.
BACKBONES = Registry('backbone', scope=_SCOPE, locations=['sherl_mm.backbones', 'sherl_mm.models.vqa'])
# A transfer-learning method applied to one backbone stack.
TUNERS = Registry('tuner', scope=_SCOPE, locations=['sherl_mm.tuners'])
