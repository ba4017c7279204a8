"""A stand-in for torchvision, only so that `import timm` works for the benchmarks' timm runs.

timm imports torchvision at import time (datasets, transforms, FrozenBatchNorm2d), but its
EfficientNet never calls it. PyPI's torchvision is built against another torch than the local CPU
wheel, so this package answers every `torchvision.<anything>` import with a placeholder module
whose names are placeholder classes: usable as values at import time (dict keys, default
arguments, `InterpolationMode.BILINEAR`), failing loudly if anything is called or instantiated.
The benchmarks put this folder on the timm subprocess's sys.path only; the project never sees it.
"""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0+standin"


class _PlaceholderMeta(type):

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _placeholder(f"{cls.__qualname__}.{name}")

  def __call__(cls, *args, **kwargs):
    raise NotImplementedError(f"torchvision stand-in: {cls.__qualname__} is not available "
                              "(benchmarks/timm_standin only lets timm import)")


_PLACEHOLDERS = {}


def _placeholder(qualname):
  if qualname not in _PLACEHOLDERS:
    _PLACEHOLDERS[qualname] = _PlaceholderMeta(qualname.rsplit(".", 1)[-1], (), {
        "__qualname__": qualname, "__module__": "torchvision"})
  return _PLACEHOLDERS[qualname]


class _StandinModule(types.ModuleType):

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _placeholder(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Makes any torchvision.* submodule a _StandinModule (a package, so deeper names import)."""

  def find_spec(self, fullname, path=None, target=None):
    del path, target
    if fullname.startswith(__name__ + "."):
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    module = _StandinModule(spec.name)
    module.__path__ = []
    return module

  def exec_module(self, module):
    parent, _, child = module.__name__.rpartition(".")
    setattr(sys.modules[parent], child, module)


sys.meta_path.insert(0, _Finder())
