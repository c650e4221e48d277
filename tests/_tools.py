"""Import a script of tools/ as a module (tools/ is not a package, and
``tools/test.py`` would shadow the standard library's ``test`` on sys.path)."""
import importlib.util
import os.path as osp
from types import ModuleType

TOOLS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'tools')


def load_tool(relpath: str) -> ModuleType:
    """``load_tool('train.py')``, ``load_tool('data/make_grounding_demo.py')``."""
    name = 'sherl_mm_tool_' + relpath.replace('/', '_').removesuffix('.py')
    spec = importlib.util.spec_from_file_location(name, osp.join(TOOLS, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
