"""A stand-in for the name ``torch`` inside one megatron-core module (the shared mechanism of the CPU fallbacks).

Many megatron-core 0.16.1 call sites hard-code CUDA: ``torch.cuda.current_device()`` as an allocation device,
``torch.zeros(..., device="cuda")``, ``torch.cuda.synchronize()``. No config flag avoids them. Instead of editing or
copying upstream functions, a patch replaces the module attribute ``torch`` of exactly the upstream module that
makes the call with a :class:`TorchView`: it forwards every attribute to the real ``torch`` except

- ``cuda``: a :class:`CudaView` that forwards to ``torch.cuda`` except for the functions a patch overrides
  (e.g. ``current_device`` -> ``torch.device("cpu")``, ``synchronize`` -> no-op);
- tensor factories (``empty``, ``zeros``, ``ones``, ``full``, ``tensor``, ``arange``) when a patch enables
  ``cpu_factories``: a CUDA ``device=`` argument (``"cuda"``, ``"cuda:0"``, ``torch.device("cuda")`` or a device
  index) becomes ``"cpu"``;
- any other top-level name a patch replaces (``attrs``, e.g. ``nn`` in :mod:`megatron_patches.softmax_threads`).

The real ``torch`` module is never modified, and other modules (including other megatron modules) are unaffected.
Several patches may add overrides to the same upstream module; they merge into one view.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Dict, Optional

import torch

_FACTORY_NAMES = ("empty", "zeros", "ones", "full", "tensor", "arange")


def cpu_device() -> torch.device:
    """The allocation device that replaces ``torch.cuda.current_device()`` on a CPU-only host."""
    return torch.device("cpu")


def noop(*args: Any, **kwargs: Any) -> None:
    """Replacement for CUDA stream/cache calls (``synchronize``, ``empty_cache``) that have no CPU meaning."""
    return None


def _to_cpu_device(device: Any) -> Any:
    """Map a CUDA device spec (str, torch.device or int index) to ``"cpu"``; leave anything else unchanged."""
    if isinstance(device, int) and not isinstance(device, bool):
        return "cpu"
    if isinstance(device, str) and device.startswith("cuda"):
        return "cpu"
    if isinstance(device, torch.device) and device.type == "cuda":
        return "cpu"
    return device


def _cpu_factory(fn: Callable) -> Callable:
    def factory(*args: Any, **kwargs: Any):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    factory.__doc__ = f"torch.{fn.__name__} with a CUDA device argument mapped to CPU (megatron_patches)."
    return factory


class CudaView:
    """Forwards to ``torch.cuda`` except for the functions in ``overrides`` (name -> callable)."""

    def __init__(self) -> None:
        self._overrides: Dict[str, Callable] = {}

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__["_overrides"]
        if name in overrides:
            return overrides[name]
        return getattr(torch.cuda, name)


class TorchView:
    """Forwards to ``torch`` except ``cuda`` (a :class:`CudaView`), the tensor factories if enabled, and `attrs`."""

    def __init__(self) -> None:
        self.__dict__["cuda"] = CudaView()
        self.__dict__["_cpu_factories"] = False

    def __getattr__(self, name: str) -> Any:
        # Only called for names not in __dict__ (everything but `cuda` and enabled factories).
        return getattr(torch, name)

    def __repr__(self) -> str:
        return f"<megatron_patches TorchView cuda_overrides={sorted(self.cuda._overrides)}>"


def install(
    module: types.ModuleType, cuda: Optional[Dict[str, Callable]] = None, cpu_factories: bool = False,
    attrs: Optional[Dict[str, Any]] = None,
) -> TorchView:
    """Give ``module`` a :class:`TorchView` as its ``torch`` (once) and merge the requested overrides into it.

    Args:
        module: an imported megatron-core module whose global ``torch`` is the real torch module.
        cuda: ``torch.cuda`` function name -> replacement, e.g. ``{"current_device": cpu_device}``.
        cpu_factories: map CUDA ``device=`` arguments of the tensor factories to CPU.
        attrs: other ``torch`` attribute name -> what the module sees instead (e.g. ``{"nn": ...}``).

    Returns the view. Idempotent: calling again with the same arguments changes nothing.
    Raises TypeError if ``module.torch`` is neither torch nor a TorchView (someone else patched it).
    """
    view = module.__dict__.get("torch")
    if view is torch:
        view = TorchView()
        module.torch = view
    elif not isinstance(view, TorchView):
        raise TypeError(f"megatron_patches: {module.__name__}.torch is {view!r}, expected the torch module")
    for name, fn in (cuda or {}).items():
        view.cuda._overrides[name] = fn
    for name, value in (attrs or {}).items():
        view.__dict__[name] = value
    if cpu_factories and not view._cpu_factories:
        for name in _FACTORY_NAMES:
            view.__dict__[name] = _cpu_factory(getattr(torch, name))
        view.__dict__["_cpu_factories"] = True
    return view
