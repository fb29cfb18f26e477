"""Reading Hugging Face safetensors checkpoints tensor by tensor, with plain file reads (no mmap).

The one reader of HF weights: the policy's loader (`dvr1.models.qwen2_5_vl.load_hf_weights`), the converters
(`dvr1.models.convert`) and tools/bench_convert.py all read through `SafetensorsFiles`.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Optional

import torch

from dvr1.models.hf_mapping import canonical_hf_name

ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


class SafetensorsError(ValueError):
    """A safetensors file that cannot be read (a dtype other than `ST_DTYPES`, truncated data); names the file."""


class SafetensorsFiles:
    """Tensors of safetensors files read with plain file reads into the process's own memory (no mmap).

    safetensors' ``safe_open(...).get_tensor`` returns tensors backed by a memory map of the file, and every page
    read stays in the process's resident set while the file is open (measured: reading 4 x 500 MB tensors through
    one handle adds 2 GB of RssFile); a converter streaming a 72B checkpoint through open handles would report a
    peak RSS of the checkpoint's size. Here each `get` reads one tensor into a fresh buffer, so memory is that
    tensor, and no file stays open between calls. Format per the safetensors spec: 8-byte little-endian header
    length, JSON header (dtype, shape, data_offsets relative to the end of the header), data.

    Args:
        path: directory. files: file names to read (default: those of ``model.safetensors.index.json``, else
            ``model.safetensors``). Names are accepted in both HF layouts (`canonical_hf_name`); `keys()` gives
            the release layout (``model.layers...``, ``visual...``, ``lm_head...``).
    Raises:
        FileNotFoundError: no safetensors weights in `path`. KeyError (`get`, `meta`): names the missing tensor.
        SafetensorsError (`get`, `meta`): a dtype other than F32/BF16/F16/F64, or a truncated file.
    """

    def __init__(self, path: str, files: Optional[list[str]] = None):
        self.path = path
        if files is None:
            index = os.path.join(path, "model.safetensors.index.json")
            if os.path.isfile(index):
                with open(index) as f:
                    files = sorted(set(json.load(f)["weight_map"].values()))
            elif os.path.isfile(os.path.join(path, "model.safetensors")):
                files = ["model.safetensors"]
            else:
                raise FileNotFoundError(f"{path}: neither model.safetensors nor model.safetensors.index.json")
        self.entries = {}  # canonical name -> (file, data start, info)
        for fn in files:
            with open(os.path.join(path, fn), "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(n))
            for k, info in header.items():
                if k != "__metadata__":
                    self.entries[canonical_hf_name(k)] = (fn, 8 + n, info)

    def keys(self):
        return self.entries.keys()

    def _entry(self, name: str):
        if name not in self.entries:
            raise KeyError(f"{self.path}: tensor {name!r} not found in the checkpoint")
        fn, base, info = self.entries[name]
        if info["dtype"] not in ST_DTYPES:
            raise SafetensorsError(f"{self.path}/{fn}: tensor {name!r} has dtype {info['dtype']}, expected one of "
                                   f"{', '.join(ST_DTYPES)}")
        return fn, base, info, ST_DTYPES[info["dtype"]]

    def meta(self, name: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """A ``meta`` tensor with the shape and dtype (or `dtype`) of `name`; reads nothing."""
        _, _, info, dt = self._entry(name)
        return torch.empty(info["shape"], dtype=dtype or dt, device="meta")

    def get(self, name: str) -> torch.Tensor:
        """`name` as a tensor (the file's dtype and shape, on CPU) in freshly allocated memory."""
        fn, base, info, dt = self._entry(name)
        start, end = info["data_offsets"]
        buf = torch.empty(end - start, dtype=torch.uint8)
        view, got = memoryview(buf.numpy()), 0
        with open(os.path.join(self.path, fn), "rb", buffering=0) as f:
            f.seek(base + start)
            while got < len(view):  # one read() returns at most ~2 GiB on Linux
                n = f.readinto(view[got:])
                if not n:
                    raise SafetensorsError(f"{self.path}/{fn}: truncated data for tensor {name!r}")
                got += n
        return buf.view(dt).reshape(info["shape"])
