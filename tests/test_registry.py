"""The registries' ``locations`` are complete: in a fresh interpreter where
only ``sherl_mm.registry`` is imported and ``default_scope='sherl_mm'`` is set,
every name registered anywhere in sherl_mm is found (as the Runner looks it
up: mmengine's root registry, switched to the scope) and is the same class;
where constructible with defaults or trivial arguments, it is built.

Each registry is checked in its own forked process, so that a name found only
because another registry's lookup imported its module by side effect counts
as missing."""
import json
import os
import os.path as osp
import subprocess
import sys
import textwrap

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))

_CHECK = textwrap.dedent('''
    import importlib, inspect, json, os, pkgutil, sys

    import mmengine.registry as mmengine_registry
    import torch
    from mmengine.registry import DefaultScope, Registry

    import sherl_mm.registry as sherl_registry

    # constructible with trivial arguments (built in the child process)
    TRIVIAL_ARGS = {
        'CheckpointCompatHook': lambda: dict(filename='epoch_1.pth'),
        'CpuBf16OptimWrapper': lambda: dict(optimizer=torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)),
        'TrainableOptimWrapperConstructor': lambda: dict(optim_wrapper_cfg=dict(optimizer=dict(type='SGD', lr=0.1))),
        'RandomSizeCrop': lambda: dict(min_size=8, max_size=16),
        'MTSA': lambda: dict(in_channels=8, side_width=4, num_sets=3),
        'UniPTModule': lambda: dict(in_channels=[8, 8], side_width=4, out_channels=8),
    }
    # all arguments optional, but one of several sources must be given, or a
    # default build takes seconds: looked up only
    LOOKUP_ONLY = {'HFEncoderStack', 'HFT5EncoderStack', 'HFT5DecoderStack', 'OpenCLIPTextStack',
                   'OpenCLIPVisionStack', 'RefCOCODataset', 'MDETRGrounding', 'CLIPRetrieval'}

    def qualname(cls):
        return f'{cls.__module__}.{cls.__qualname__}'

    def needs_arguments(cls):
        params = inspect.signature(cls).parameters.values()
        return any(p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)

    def in_child(fn, out):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                with open(out, 'w') as f:
                    json.dump(fn(), f)
            except BaseException as err:
                print(f'{out}: {type(err).__name__}: {err}', file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert status == 0, f'child for {out} failed'
        with open(out) as f:
            return json.load(f)

    def everything_registered():
        # the truth: import every module of the package
        for info in pkgutil.walk_packages(sys.modules['sherl_mm'].__path__, 'sherl_mm.'):
            importlib.import_module(info.name)
        return {name: {key: qualname(cls) for key, cls in reg.module_dict.items()}
                for name, reg in registries().items()}

    def registries():
        return {name: reg for name, reg in vars(sherl_registry).items() if isinstance(reg, Registry)}

    def look_up(registry_name, keys):
        DefaultScope.get_instance('registry-check', scope_name='sherl_mm')
        own = registries()[registry_name]
        root = getattr(mmengine_registry, registry_name) if own.parent is not None else own
        classes = {}
        for key in keys:  # every lookup before any build: a build may import other modules
            with root.switch_scope_and_registry(None) as scoped:
                assert scoped is own, (registry_name, scoped)
                classes[key] = scoped.get(key)
        result = {key: dict(cls=qualname(cls) if cls is not None else None, built=False)
                  for key, cls in classes.items()}
        for key, cls in classes.items():
            if cls is not None and key not in LOOKUP_ONLY and (key in TRIVIAL_ARGS or not needs_arguments(cls)):
                root.build(dict(type=key, **TRIVIAL_ARGS.get(key, dict)()))
                result[key]['built'] = True
        return result

    out_dir = sys.argv[1]
    # mmdet's locations (which every child registry lists after its own)
    # once here rather than in every child: no sherl_mm module is imported
    for reg in registries().values():
        for location in reg.parent._locations if reg.parent is not None else ():
            importlib.import_module(location)
    loaded = sorted(m for m in sys.modules if m.startswith('sherl_mm'))
    assert loaded == ['sherl_mm', 'sherl_mm.registry'], loaded
    truth = in_child(everything_registered, os.path.join(out_dir, 'truth.json'))
    found = {name: in_child(lambda: look_up(name, sorted(keys)), os.path.join(out_dir, f'{name}.json'))
             for name, keys in truth.items() if keys}
    print(json.dumps(dict(truth=truth, found=found)))
''')


def test_every_registered_name_is_found_through_the_locations(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore', HF_HUB_OFFLINE='1')
    proc = subprocess.run([sys.executable, '-c', _CHECK, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    truth, found = report['truth'], report['found']
    assert {'HOOKS', 'MODELS', 'TUNERS', 'BACKBONES', 'DATASETS', 'TRANSFORMS', 'METRICS'} <= set(found)
    missing = {f'{registry}.{key}': where for registry, names in truth.items() for key, where in names.items()
               if found[registry][key]['cls'] != where}
    assert not missing, f'registered but not found through the registry locations: {missing}'
    built = sorted(key for names in found.values() for key, entry in names.items() if entry['built'])
    # the defaults-or-trivial-arguments ones, e.g.
    assert {'AtomicCheckpointHook', 'CheckpointCompatHook', 'PeakMemoryHook', 'ParameterTableHook',
            'CpuBf16OptimWrapper', 'TrainableOptimWrapperConstructor', 'ResNetStack', 'MTSA'} <= set(built), built
