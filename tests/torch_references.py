"""Importing the PyTorch reference packages that need torchvision (lpips, clean-fid).

The test extra pins torch 2.13.0, whose wheel on this registry is the CPU build, while PyPI's
torchvision wheels are built against CUDA torch: their `_C.so` links `libtorch_cuda.so`, so it
cannot load, and `import torchvision` then fails in `_meta_registrations` ("operator
torchvision::nms does not exist"), the only place that registers a kernel for an operator that
`_C.so` would have defined. Two measures keep the references sound and everything else intact:

- torchvision, lpips and clean-fid are not in the venv's site-packages (where transformers and
  diffusers would find torchvision and fail importing their models) but in their own folder,
  `.venv/torch-refs` (`make test` installs them there, `--no-deps`, pinned in the Makefile),
  which only this module puts on `sys.path`;
- we use torchvision only for its model definitions (AlexNet, VGG-16: plain PyTorch layers),
  never its C++ operators (nms, roi_align, ...). So, only when `_C.so` cannot load, we declare
  the two operator schemas `_meta_registrations` needs before importing it; calling either
  operator still fails ("no kernel"), and every layer we compare against is unmodified.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")  # fmt: skip
_library = None  # kept alive: dropping a torch.library.Library removes its definitions
REFS = os.environ.get("ND3D_TORCH_REFS", os.path.join(sys.prefix, "torch-refs"))


def _refs_on_path() -> None:
    if importlib.util.find_spec("torchvision") is not None:
        return
    if not os.path.isdir(REFS):
        raise ImportError(f"{REFS} not found: `make test` installs torchvision, lpips and "
                          "clean-fid there (or set ND3D_TORCH_REFS)")  # fmt: skip
    sys.path.append(REFS)
    importlib.invalidate_caches()


def _ops_load() -> bool:
    import torch

    _refs_on_path()
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("torchvision is not installed (pip install -e '.[test]')")
    so = os.path.join(spec.submodule_search_locations[0], "_C.so")
    try:
        torch.ops.load_library(so)
    except OSError:
        return False
    return True


def import_torchvision():
    """`torchvision`, importable beside the CPU build of torch (see the module docstring)."""
    global _library
    import torch

    if _library is None and not _ops_load():
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
    import torchvision

    return torchvision


def import_lpips():
    """The `lpips` package (Zhang et al. 2018), which imports torchvision's models."""
    import_torchvision()
    import lpips

    return lpips


def import_cleanfid():
    """clean-fid's `fid` and `resize` modules."""
    import_torchvision()
    from cleanfid import fid, resize

    return fid, resize
