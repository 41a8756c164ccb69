"""Loaded at interpreter start in the SGLang test venv (through apr_sglang_cpu.pth): the torchvision stand-in.

SGLang imports torchvision when its configs load (sglang/srt/configs/nano_nemotron_vl.py:22 ->
sglang/srt/multimodal/internvl_utils.py:5), even for text models. PyPI's torchvision for Linux is a CUDA build
whose C extension does not load beside the CPU torch, so its operators are never defined, and
torchvision/_meta_registrations.py:163 and :177 then fail with "operator torchvision::nms does not exist" when
they register fake kernels for `torchvision::nms` and `torchvision::qnms` (the only two it registers without
checking that the extension loaded). Defining those two schemas, exactly as torchvision's C++ library declares
them, before torchvision loads lets it import. No torchvision op ever runs for a text model; calling one raises
torch's "no kernel registered" error rather than computing anything.

The definition waits until something imports torchvision, so other programs of the venv (pip) never load torch.
"""

from __future__ import annotations

import importlib.abc
import sys

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None  # kept alive: torch drops the definitions when the Library object is collected


class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        global _library
        if fullname == "torchvision" and _library is None:
            import torch
            _library = torch.library.Library("torchvision", "DEF")
            for schema in _SCHEMAS:
                _library.define(schema)
        return None  # the normal finders load the real torchvision


sys.meta_path.insert(0, _DefineTorchvisionOps())
