"""The registries of sherl_mm.

Each is a child of the matching mmdet registry, so that configs with
``default_scope='sherl_mm'`` find sherl_mm's own components and everything
mmdet and mmengine register (hooks, transforms, metrics, optimizers ...).
``locations`` lets the Runner import the modules that fill a registry without
the user importing sherl_mm by hand.
"""
from mmdet import registry as mmdet_registry
from mmengine.registry import Registry

_SCOPE = 'sherl_mm'


def _child(name: str, parent: Registry, locations: list[str]) -> Registry:
    # A registry imports only its own locations, never its parent's: list
    # mmdet's too so that e.g. ``type='ResNet'`` resolves without an import.
    return Registry(name, parent=parent, scope=_SCOPE, locations=locations + list(parent._locations))


RUNNERS = _child('runner', mmdet_registry.RUNNERS, ['sherl_mm.engine'])
RUNNER_CONSTRUCTORS = _child('runner constructor', mmdet_registry.RUNNER_CONSTRUCTORS, ['sherl_mm.engine'])
LOOPS = _child('loop', mmdet_registry.LOOPS, ['sherl_mm.engine'])
HOOKS = _child('hook', mmdet_registry.HOOKS, ['sherl_mm.hooks', 'sherl_mm.engine.hooks'])
LOG_PROCESSORS = _child('log_processor', mmdet_registry.LOG_PROCESSORS, ['sherl_mm.engine'])
OPTIMIZERS = _child('optimizer', mmdet_registry.OPTIMIZERS, ['sherl_mm.engine'])
OPTIM_WRAPPERS = _child('optim_wrapper', mmdet_registry.OPTIM_WRAPPERS, ['sherl_mm.engine'])
OPTIM_WRAPPER_CONSTRUCTORS = _child('optimizer wrapper constructor',
                                    mmdet_registry.OPTIM_WRAPPER_CONSTRUCTORS, ['sherl_mm.engine'])
PARAM_SCHEDULERS = _child('parameter scheduler', mmdet_registry.PARAM_SCHEDULERS, ['sherl_mm.engine'])
DATASETS = _child('dataset', mmdet_registry.DATASETS, ['sherl_mm.datasets'])
DATA_SAMPLERS = _child('data sampler', mmdet_registry.DATA_SAMPLERS, ['sherl_mm.datasets'])
TRANSFORMS = _child('transform', mmdet_registry.TRANSFORMS, ['sherl_mm.datasets.transforms'])
MODELS = _child('model', mmdet_registry.MODELS, ['sherl_mm.models', 'sherl_mm.backbones', 'sherl_mm.tuners'])
MODEL_WRAPPERS = _child('model_wrapper', mmdet_registry.MODEL_WRAPPERS, ['sherl_mm.engine'])
WEIGHT_INITIALIZERS = _child('weight initializer', mmdet_registry.WEIGHT_INITIALIZERS, ['sherl_mm.models'])
TASK_UTILS = _child('task util', mmdet_registry.TASK_UTILS, ['sherl_mm.models'])
METRICS = _child('metric', mmdet_registry.METRICS, ['sherl_mm.evaluation'])
EVALUATOR = _child('evaluator', mmdet_registry.EVALUATOR, ['sherl_mm.evaluation'])
VISUALIZERS = _child('visualizer', mmdet_registry.VISUALIZERS, ['sherl_mm.evaluation'])
VISBACKENDS = _child('vis_backend', mmdet_registry.VISBACKENDS, ['sherl_mm.evaluation'])

# Roots of their own (not children of MODELS, whose child slot for this scope
# is taken): their components build nn.Modules and may nest MODELS configs.
# A frozen pre-trained network exposed as an ordered stack of layers.
BACKBONES = Registry('backbone', scope=_SCOPE, locations=['sherl_mm.backbones'])
# A transfer-learning method applied to one backbone stack.
TUNERS = Registry('tuner', scope=_SCOPE, locations=['sherl_mm.tuners'])
