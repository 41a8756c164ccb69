"""A stand-in for `triton` on CPU machines, for testing apr-ds against real SGLang.

SGLang imports triton unconditionally (sglang/srt/utils/common.py:91) and defines its GPU kernels with
`@triton.jit` at module level (e.g. sglang/srt/mem_cache/allocation.py:692), yet on CPU with
`SGLANG_USE_CPU_ENGINE=1` it never launches one: the CPU paths call torch or sgl_kernel ops instead. The real
triton wheel is a CUDA toolchain (ptxas, CUDA headers, 1 GB) and slows SGLang's start-up, so this package
stands in for it, the way SGLang stubs triton itself on macOS (sglang/_platform_stubs.py): every module and
attribute exists, decorators pass functions through, and launching a kernel raises, so a GPU path reached by
mistake fails loudly instead of computing nothing.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "3.0.0+apr-ds-cpu-standin"


class _StubBase:
    """What `class K(triton.runtime.KernelInterface)` and friends subclass."""


class _Kernel:
    """A `@triton.jit` function: defined, never launched on CPU."""

    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def __getitem__(self, grid):
        raise NotImplementedError(f"triton kernel {self.__name__} was launched, but triton is apr-ds's CPU "
                                  f"stand-in (tools/sglang_cpu/triton): this SGLang path is not CPU-ready")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def _decorator(*args, **kwargs):
    """`@triton.jit` and `@triton.jit(...)`; also autotune/heuristics, which wrap a jit function."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0] if isinstance(args[0], _Kernel) else _Kernel(args[0])
    return lambda fn: fn if isinstance(fn, _Kernel) else _Kernel(fn)


class _Module(types.ModuleType):
    """A module whose missing attributes are stubs: CamelCase names are classes, the rest callables/modules."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__path__ = []
        self.__spec__ = importlib.machinery.ModuleSpec(name, _Finder(), is_package=True)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name[:1].isupper():
            value = type(name, (_StubBase,), {"__module__": self.__name__})
        else:
            value = _submodule(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args, **kwargs):
        return _decorator(*args, **kwargs)


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes `import triton.x.y` succeed for any submodule."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith("triton."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _submodule(spec.name)

    def exec_module(self, module):
        pass


def _submodule(name: str) -> _Module:
    if name not in sys.modules:
        module = _Module(name)
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)
    return sys.modules[name]


class Config:
    """`triton.Config`, as `@triton.autotune` lists take it."""

    def __init__(self, kwargs=None, num_warps=4, num_stages=2, **extra):
        self.kwargs, self.num_warps, self.num_stages = kwargs or {}, num_warps, num_stages


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


def next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length() if n > 0 else 1


jit = autotune = heuristics = _decorator
sys.meta_path.insert(0, _Finder())

language = _submodule("triton.language")


class constexpr:
    """`tl.constexpr`, as an annotation and as a value wrapper."""

    def __init__(self, value=None):
        self.value = value


language.constexpr = constexpr
# Torch's Inductor imports these as exception classes while it initialises, even when it compiles nothing.
_autotuner = _submodule("triton.runtime.autotuner")
_autotuner.OutOfResources = type("OutOfResources", (Exception,), {})
_autotuner.PTXASError = type("PTXASError", (Exception,), {})
_submodule("triton.runtime.jit").JITFunction = _Kernel
_submodule("triton.runtime.cache").triton_key = lambda: "apr-ds-cpu-standin"
_submodule("triton.compiler.compiler").triton_key = lambda: "apr-ds-cpu-standin"
