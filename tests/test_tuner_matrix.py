"""Every registered tuner on every backbone wrapper: built from a config,
forward + backward on a tiny random model, gradients only where they belong,
and the tuned output has the plain route's shape. Combinations that cannot
work must fail at build time with an error naming the option at fault."""
import pytest
import torch

from sherl_mm.registry import BACKBONES, TUNERS
from _backbone_factories import STACK_NAMES, example_inputs, stack_config

TUNER_CONFIGS = {
    'FullFineTune': dict(type='FullFineTune'),
    'LinearProbe': dict(type='LinearProbe'),
    'LoRA': dict(type='LoRA', rank=2),
    'Adapter': dict(type='Adapter', reduction=4),
    'BitFit': dict(type='BitFit'),
    'PromptTuning': dict(type='PromptTuning', num_tokens=2),
    'SHERL': dict(type='SHERL'),
    'UniPT': dict(type='UniPT'),
    'LST': dict(type='LST', reduction=2),
}
# CNN blocks have no attention: LoRA must be told which convolutions to adapt.
LORA_CNN_TARGETS = {'resnet': r'.*conv2', 'efficientnet': r'.*_project_conv'}
# (stack, tuner) -> a fragment of the error message that must name the cause.
UNSUPPORTED = {
    ('t5_encoder', 'BitFit'): 'no bias parameter found',   # T5 layers have no biases
    ('t5_decoder', 'BitFit'): 'no bias parameter found',
    ('resnet', 'PromptTuning'): "layout='feature_map'",
    ('efficientnet', 'PromptTuning'): "layout='feature_map'",
}


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    # the models are tiny: intra-op threads only wait for each other (on a loaded 2-core machine
    # the matrix takes a minute with 2 threads and seconds with 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(stack_name: str, tuner_name: str) -> dict:
    cfg = dict(TUNER_CONFIGS[tuner_name])
    if tuner_name == 'LoRA' and stack_name in LORA_CNN_TARGETS:
        cfg['target_modules'] = LORA_CNN_TARGETS[stack_name]
    return cfg


@pytest.mark.parametrize('tuner_name', list(TUNER_CONFIGS))
@pytest.mark.parametrize('stack_name', STACK_NAMES)
def test_tuner_on_backbone(stack_name: str, tuner_name: str) -> None:
    cfg = _config(stack_name, tuner_name)
    # the tuner builds its stack from the BACKBONES config, as in a model config
    cfg['stack'] = stack_config(stack_name)
    if (stack_name, tuner_name) in UNSUPPORTED:
        with pytest.raises(ValueError, match=UNSUPPORTED[stack_name, tuner_name].replace('(', r'\(')):
            TUNERS.build(cfg)
        return
    args, kwargs = example_inputs(stack_name)
    plain = BACKBONES.build(stack_config(stack_name)).eval()
    with torch.no_grad():
        expected_shape = plain(*args, **kwargs).hidden.shape

    tuner = TUNERS.build(cfg)
    assert type(tuner.stack) is type(plain)
    out = tuner(*args, **kwargs)
    assert out.hidden.shape == expected_shape
    assert torch.isfinite(out.hidden).all()

    trainable = [p for p in tuner.parameters() if p.requires_grad]
    frozen = [p for p in tuner.parameters() if not p.requires_grad]
    if tuner_name == 'LinearProbe':
        assert not trainable and not out.hidden.requires_grad
        return
    assert trainable, f'{tuner_name} on {stack_name} has nothing to train'
    if tuner_name != 'FullFineTune':
        assert frozen, f'{tuner_name} on {stack_name} froze nothing'
    out.hidden.float().pow(2).mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for p in frozen)
