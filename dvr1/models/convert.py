"""Hugging Face <-> megatron-core distributed checkpoint conversion for Qwen2.5-VL (3B-72B), at any TP/PP.

Weights go through the one mapping table, :mod:`dvr1.models.hf_mapping` (the layouts of Megatron-Bridge's
Qwen2.5-VL bridge, ``src/megatron/bridge/models/qwen_vl/qwen25_vl_bridge.py`` ``Qwen25VLBridge.mapping_registry``:
``QKVMapping`` = per-KV-group [q heads; k; v] rows in ``linear_qkv`` (weights and biases), ``GatedMLPMapping`` =
[gate; up] in ``linear_fc1``, ``AutoMapping`` for norms / ``linear_proj`` / ``linear_fc2`` / embeddings / output
layer, ``ReplicatedMapping("visual.**")`` = the vision tower and merger carried as-is).

HF -> megatron (:func:`convert_hf_to_megatron`) runs in ONE process and writes the shards of every TP rank and PP
stage. Why one process and not torchrun with world = TP*PP: a megatron-core ``torch_dist`` checkpoint (PyTorch DCP
files + ``metadata.json`` + ``common.pt``; megatron-core 0.16.1 ``dist_checkpointing/strategies/torch.py``) stores
each tensor under its *global* shape, cut into chunks; megatron's save on rank r writes rank r's main-replica chunks.
The chunk grid depends only on the tensor and TP -- layers are stacked on a leading axis with one chunk per layer,
whatever PP is -- so one process can lay out every rank's chunks itself, streaming tensor by tensor, instead of
``tp*pp`` processes that each hold a model shard in memory. Keys, global shapes, the stacked-layer axis, the SwiGLU
factory (``transformer/mlp.py:276`` ``apply_swiglu_sharded_factory``: gate and up stored as two halves of one key)
and the ``_extra_state`` objects come from megatron-core itself: ``Qwen25VLPolicy.sharded_state_dict()`` of the model
built on the ``meta`` device at TP=1. The TP cut of each tensor is the dimension along which ``hf_to_megatron``
shards it. Chunk data is produced lazily: for each megatron tensor, one generator per TP rank
(``hf_to_megatron(get, shape, tp_rank, tp)``) yields that rank's shard, reading the Hugging Face tensor once (cached
until the next tensor), so peak memory is about the largest HF tensor plus one TP shard (plus the previous tensor,
which TP-rank generators that have not advanced yet still reference; tools/bench_convert.py measured 1.6 x the
largest tensor on a 72B-shaped checkpoint at TP=8). HF tensors are read with plain file reads
(`dvr1.models.safetensors_io.SafetensorsFiles`), not safetensors' mmap. DCP validates that the chunks tile every tensor exactly. Tests compare the written ``.metadata`` with megatron's own save at TP=1 and
TP=2/PP=2, and load the result with ``dist_checkpointing.load`` at other layouts.

Output directory of HF -> megatron (also a valid ``run_dir`` for :func:`dvr1.train.checkpoint.load_checkpoint`)::

    config.json, generation_config.json, tokenizer / processor files   copied from the HF directory
    visual.safetensors             vision tower + merger (HF names ``visual.*``; never TP-split; a training run with
                                   model.freeze_vision=false saves its trained tower in the dist checkpoint instead)
    ckpt/latest                    "0"
    ckpt/step_0/dist/              megatron-core dist checkpoint (torch_dist) of the language model, keys ``lm.*``
    ckpt/step_0/meta.json          {"step": 0, "world_size": null, "tp_size", "pp_size", "converted_from"}
    ckpt/step_0/extra/rank_00000.pt   {"rng": None, "extra_state": {"step": 0, "converted_from": ...}}
    dvr1_convert.json              what was converted, how

``world_size: null`` marks a converted checkpoint: ``load_checkpoint`` then never restores per-rank RNG states.

megatron -> HF (:func:`convert_megatron_to_hf`) reads a dist checkpoint (converted or saved by training, any TP/PP)
one full tensor at a time with ``dist_checkpointing.load`` and writes ``model-0000i-of-0000N.safetensors`` shards
(``max_shard_size``) + ``model.safetensors.index.json`` + config / tokenizer / processor files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import shutil
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

from dvr1.models.hf_mapping import LMShape, hf_to_megatron, megatron_to_hf
from dvr1.models.safetensors_io import SafetensorsFiles

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json", ".msgpack",
                   ".h5")
VISUAL_FILE = "visual.safetensors"
CONVERT_INFO = "dvr1_convert.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ConversionError(ValueError):
    """A checkpoint or a TP/PP layout that cannot be converted (the message names the file / field / setting)."""


# ---- small helpers ---------------------------------------------------------------------------------------------

def parse_dtype(dtype) -> Optional[torch.dtype]:
    """None / "auto" -> None (keep the checkpoint's dtype); "bf16" | "bfloat16" | "fp32" | ... -> torch dtype.

    Raises ConversionError naming the valid spellings.
    """
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ConversionError(f"dtype {dtype!r} is not one of: auto, {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _ensure_single_process():
    """Conversion runs in one process: bring up a world of one (TP=1/PP=1) if nothing is initialised."""
    import torch.distributed as dist

    from dvr1.parallel.setup import init_parallel

    if dist.is_initialized() and dist.get_world_size() > 1:
        raise ConversionError(f"checkpoint conversion runs in a single process; torch.distributed has world size "
                              f"{dist.get_world_size()} (run the converter without torchrun)")
    from dvr1.parallel import grid

    if not grid.initialized():
        init_parallel(tp=1, pp=1, seed=0)


def check_layout(hf_config, tp: int, pp: int) -> None:
    """Raise ConversionError unless TP divides heads, KV heads, FFN and vocab, and PP divides the layers.

    Fields are named as in the HF config.json (``text_config``).
    """
    t = hf_config.text_config
    if tp < 1 or pp < 1:
        raise ConversionError(f"tp and pp must be >= 1, got tp={tp}, pp={pp}")
    for field in ("num_attention_heads", "num_key_value_heads", "intermediate_size", "vocab_size"):
        if getattr(t, field) % tp:
            raise ConversionError(f"config.json text_config.{field}={getattr(t, field)} is not divisible by tp={tp}")
    if t.num_hidden_layers % pp:
        raise ConversionError(f"config.json text_config.num_hidden_layers={t.num_hidden_layers} is not divisible "
                              f"by pp={pp}")


def meta_policy(hf_config, params_dtype=torch.float32):
    """`Qwen25VLPolicy` at TP=1/PP=1 on the ``meta`` device (no memory, no initialisation): the megatron-core
    model whose ``sharded_state_dict()`` defines the checkpoint keys. Needs a TP=1 model-parallel state."""
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy

    with torch.device("meta"):
        return Qwen25VLPolicy(hf_config, params_dtype=params_dtype)


def _copy_side_files(src: str, dst: str) -> list[str]:
    """Copy every top-level non-weight file (config, generation config, tokenizer, processor, chat template)."""
    copied = []
    for f in sorted(os.listdir(src)):
        p = os.path.join(src, f)
        if os.path.isfile(p) and not f.endswith(WEIGHT_SUFFIXES) and f != CONVERT_INFO:
            shutil.copy(p, os.path.join(dst, f))
            copied.append(f)
    return copied


def _tqdm(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, **kw)


# ---- HF -> megatron ---------------------------------------------------------------------------------------------

@dataclass
class _Chunk:
    """One DCP write item: a TP shard of one (part of a) megatron tensor."""

    fqn: str                     # megatron sharded key, e.g. lm.decoder.layers.self_attention.linear_qkv.weight
    offsets: tuple               # global offsets (stacked-layer axis first for decoder layers)
    sizes: tuple                 # chunk shape (leading 1 for the layer axis)
    global_shape: tuple
    dtype: torch.dtype
    source: str                  # megatron parameter name hf_to_megatron yields (local spec, local layer index)
    tp_rank: int                 # which TP rank's shard holds it
    part: Callable               # local shard -> this chunk's data (SwiGLU half or the shard itself)
    stage: int                   # PP stage (output file)


@dataclass
class _Object:
    """One megatron ShardedObject (`_extra_state`), stored as torch.save([data]) like megatron does."""

    fqn: str
    data: object
    stage: int


def _stage_of(name: str, n_layers: int, pp: int) -> int:
    if name.startswith("decoder.layers."):
        return int(name.split(".")[2]) // (n_layers // pp)
    return 0 if name.startswith("embedding.") else pp - 1


def plan_hf_to_megatron(hf_config, meta_get: Callable, tp: int = 1, pp: int = 1,
                        params_dtype=torch.float32) -> tuple[list[_Chunk], list[_Object], dict]:
    """Every chunk and object of the TP/PP dist checkpoint of `hf_config`'s language model, in write order.

    Args:
        meta_get: HF name -> ``meta`` tensor with the HF tensor's shape and (target) dtype.
    Returns:
        (chunks, objects, common_state): chunks in `hf_to_megatron`'s order, TP ranks ascending within a tensor;
        common_state is what megatron's save puts in ``common.pt``.
    Raises:
        ConversionError: the mapping and megatron-core's model disagree (a tensor only one side knows, a shape).
    """
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, ShardedTensorFactory
    from megatron.core.dist_checkpointing.state_dict_utils import save_preprocess

    from dvr1.models.qwen2_5_vl import lm_shape

    check_layout(hf_config, tp, pp)
    s = lm_shape(hf_config)
    sd = meta_policy(hf_config, params_dtype).sharded_state_dict()
    full = list(hf_to_megatron(meta_get, s, 0, 1))
    local0 = dict(hf_to_megatron(meta_get, s, 0, tp)) if tp > 1 else dict(full)
    chunks, seen = [], set()
    for name, t in full:
        entry = sd.get("lm." + name)
        if entry is None:
            raise ConversionError(f"the mapping yields {name!r}, which megatron-core's model does not have")
        seen.add("lm." + name)
        split = [d for d in range(t.ndim) if local0[name].shape[d] != t.shape[d]]
        if len(split) > 1 or (split and local0[name].shape[split[0]] * tp != t.shape[split[0]]):
            raise ConversionError(f"{name}: TP={tp} shard shape {tuple(local0[name].shape)} is not a 1-D cut of "
                                  f"{tuple(t.shape)}")
        dim = split[0] if split else None
        if isinstance(entry, ShardedTensorFactory):
            if tuple(entry.data.shape) != tuple(t.shape):
                raise ConversionError(f"{name}: model shape {tuple(entry.data.shape)} != mapped {tuple(t.shape)}")
            parts = entry.build_fn(entry.key, t, entry.replica_id, None)
            build = entry.build_fn
            getters = [(lambda x, i=i, e=entry, b=build: b(e.key, x, e.replica_id, None)[i].data)
                       for i in range(len(parts))]
        elif isinstance(entry, ShardedTensor):
            if tuple(entry.local_shape) != tuple(t.shape):
                raise ConversionError(f"{name}: model shape {tuple(entry.local_shape)} != mapped {tuple(t.shape)}")
            parts, getters = [entry], [lambda x: x]
        else:
            raise ConversionError(f"{name}: unexpected sharded entry {type(entry).__name__}")
        stage = _stage_of(name, s.num_layers, pp)
        for r in range(tp if dim is not None else 1):
            for st, get_part in zip(parts, getters):
                n = st.prepend_axis_num
                sizes = [1] * n + list(st.local_shape)
                offsets = list(st.global_offset)
                if dim is not None:
                    sizes[n + dim] //= tp
                    offsets[n + dim] += r * sizes[n + dim]
                chunks.append(_Chunk(st.key, tuple(offsets), tuple(sizes), tuple(st.global_shape), t.dtype, name, r,
                                     get_part, stage))
    objects = []
    for k, v in sd.items():
        if isinstance(v, ShardedObject):
            objects.append(_Object(v.unique_key, v.data, _stage_of(k[3:], s.num_layers, pp)))
        elif isinstance(v, (ShardedTensor, ShardedTensorFactory)) and k not in seen:
            raise ConversionError(f"megatron-core's model has {k!r}, which the HF mapping does not produce")
    _, common = save_preprocess({"model": sd}, validate_access_integrity=False)
    return chunks, objects, common


class _StreamingPlanner(DefaultSavePlanner):
    """DCP save planner whose write items are `plan_hf_to_megatron`'s chunks; data is produced on request.

    torch's ``DefaultSavePlanner`` (torch/distributed/checkpoint/default_planner.py) makes the global plan and the
    metadata and checks that the chunks tile each tensor exactly; only the local plan and `resolve_data` differ.
    `gens[r]` is TP rank r's ``hf_to_megatron`` generator; `cache` holds the HF tensors of the current tensor.
    """

    def __init__(self, chunks: list[_Chunk], objects: list[_Object], gens: list[Iterator], cache: dict,
                 on_tensor: Callable[[str], None], dtype: Optional[torch.dtype]):
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.chunks = {(c.fqn, c.offsets): c for c in chunks}
        self.order = chunks
        self.objects = {o.fqn: o for o in objects}
        self.gens, self.cache, self.on_tensor, self.dtype = gens, cache, on_tensor, dtype
        self.source, self.rank, self.local = None, None, None
        self.tp_split = {c.source for c in chunks if c.tp_rank > 0}

    def create_local_plan(self):
        items = [WriteItem(index=MetadataIndex(o.fqn), type=WriteItemType.BYTE_IO) for o in self.objects.values()]
        for c in self.order:
            props = TensorProperties.create_from_tensor(torch.empty(0, dtype=c.dtype, device="meta"))
            items.append(WriteItem(
                index=MetadataIndex(c.fqn, torch.Size(c.offsets)), type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)),
                                            properties=props, size=torch.Size(c.global_shape))))
        self.plan = SavePlan(items)
        return self.plan

    def _advance(self, r: int, name: str) -> torch.Tensor:
        """Run TP rank r's generator to `name` (skipping tensors only TP rank 0 stores: norms)."""
        while True:
            got, t = next(self.gens[r])
            if got == name:
                return t
            if r == 0 or got in self.tp_split:
                raise RuntimeError(f"internal: TP rank {r} writes {name!r} next but the mapping yielded {got!r}")

    def resolve_data(self, write_item):
        if write_item.type == WriteItemType.BYTE_IO:
            buf = io.BytesIO()
            torch.save([self.objects[write_item.index.fqn].data], buf)  # megatron's ShardedObject encoding
            return buf
        c = self.chunks[(write_item.index.fqn, tuple(write_item.index.offset))]
        if c.source != self.source:
            self.cache.clear()  # the previous tensor's HF inputs
            self.source, self.rank, self.local = c.source, None, None
            self.on_tensor(c.source)
        if c.tp_rank != self.rank:
            self.local = None
            t = self._advance(c.tp_rank, c.source)
            self.local = t if self.dtype is None else t.to(self.dtype)
            self.rank = c.tp_rank
        return c.part(self.local).reshape(c.sizes)


def _stage_writer(path: str, chunks: list[_Chunk], objects: list[_Object]):
    """torch ``FileSystemWriter`` that writes one ``__{stage}_0.distcp`` file per PP stage, stages in order (the
    default writes one file per rank; here one process plays every rank). Overrides ``write_data`` of
    torch/distributed/checkpoint/filesystem.py (torch 2.13) and reuses its ``_write_data``."""
    stage = {(c.fqn, c.offsets): c.stage for c in chunks}
    stage.update({(o.fqn, None): o.stage for o in objects})

    class _Writer(FileSystemWriter):
        def write_data(self, plan, planner):
            buckets = {}
            for item in plan.items:
                off = None if item.index.offset is None else tuple(item.index.offset)
                buckets.setdefault(stage[(item.index.fqn, off)], []).append(item)
            q = queue.Queue()
            for st in sorted(buckets):
                name = f"__{st}_0.distcp"
                q.put((self.fs.concat_path(self.path, name), name, buckets[st]))
            return self._write_data(planner, q)

    return _Writer(path, single_file_per_rank=True, thread_count=1, sync_files=True)


def convert_hf_to_megatron(src: str, out: str, tp: int = 1, pp: int = 1, dtype=None, progress: bool = True) -> str:
    """Convert a HF Qwen2.5-VL checkpoint directory into a megatron-core dist checkpoint laid out for TP/PP.

    Args:
        src: HF directory (config.json + model.safetensors or sharded with model.safetensors.index.json).
        out: output directory (layout in the module docstring); written as ``out.tmp`` then renamed.
        tp / pp: the layout of the chunks (any layout can load it: dist_checkpointing reshards).
        dtype: None/"auto" keeps the HF dtype; "bf16" / "fp32" / "fp16" casts the language model (the vision
            tower is carried as-is).
        progress: tqdm bar per tensor.
    Returns:
        `out`.
    Raises:
        FileNotFoundError / ValueError: no config.json or model_type not qwen2_5_vl (`load_hf_config`).
        ConversionError: TP/PP does not divide the model, or a tensor is missing / unexpected.
        KeyError: a tensor the mapping needs is missing from the HF checkpoint (names it).
    Single process; initialises a TP=1 world of one if torch.distributed is not initialised.
    """
    from megatron.core.dist_checkpointing.core import CheckpointingConfig, save_config
    from safetensors.torch import save_file
    from torch.distributed.checkpoint import save as dcp_save

    from dvr1.models.qwen2_5_vl import lm_shape, load_hf_config

    _ensure_single_process()
    dtype = parse_dtype(dtype)
    cfg = load_hf_config(src)
    check_layout(cfg, tp, pp)
    s = lm_shape(cfg)
    reader = SafetensorsFiles(src)
    lm_dtype = dtype or reader.meta("model.embed_tokens.weight").dtype
    chunks, objects, common = plan_hf_to_megatron(cfg, lambda n: reader.meta(n, dtype), tp, pp, lm_dtype)

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    step_dir = os.path.join(tmp, "ckpt", "step_0")
    dist_dir = os.path.join(step_dir, "dist")
    os.makedirs(dist_dir)
    os.makedirs(os.path.join(step_dir, "extra"))

    cache: dict[str, torch.Tensor] = {}

    def cached_get(name):
        if name not in cache:
            cache[name] = reader.get(name)
        return cache[name]

    gens = [hf_to_megatron(cached_get, s, r, tp) for r in range(tp)]
    n_tensors = len({c.source for c in chunks})
    with _tqdm(progress, total=n_tensors, desc=f"hf->megatron tp={tp} pp={pp}", unit="tensor") as bar:
        planner = _StreamingPlanner(chunks, objects, gens, cache, lambda name: bar.update(1), dtype)
        dcp_save({}, storage_writer=_stage_writer(dist_dir, chunks, objects), planner=planner, no_dist=True)
    cache.clear()
    torch.save(common, os.path.join(dist_dir, "common.pt"))
    save_config(CheckpointingConfig("torch_dist", 1), dist_dir)  # metadata.json, written last as megatron does

    src_abs = os.path.abspath(src)
    with open(os.path.join(step_dir, "meta.json"), "w") as f:
        json.dump({"step": 0, "world_size": None, "tp_size": tp, "pp_size": pp, "converted_from": src_abs}, f,
                  indent=1)
    torch.save({"rng": None, "extra_state": {"step": 0, "converted_from": src_abs}, "rank": 0},
               os.path.join(step_dir, "extra", "rank_00000.pt"))
    with open(os.path.join(tmp, "ckpt", "latest"), "w") as f:
        f.write("0\n")

    vis = [k for k in reader.keys() if k.startswith("visual.")]
    if not vis:
        raise ConversionError(f"{src}: no vision tower tensors (visual.*) in the checkpoint")
    visual = {}
    for k in _tqdm(progress, iterable=vis, desc="vision tower", unit="tensor"):
        visual[k] = reader.get(k)
    save_file(visual, os.path.join(tmp, VISUAL_FILE), metadata={"format": "pt"})
    del visual
    copied = _copy_side_files(src, tmp)
    with open(os.path.join(tmp, CONVERT_INFO), "w") as f:
        json.dump({"direction": "hf_to_megatron", "source": src_abs, "tp": tp, "pp": pp,
                   "dtype": str(lm_dtype).removeprefix("torch."), "tensors": n_tensors, "chunks": len(chunks),
                   "copied": copied}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def load_megatron_checkpoint(policy, path: str, hf_dir: Optional[str] = None, step: Optional[int] = None):
    """Load a dist checkpoint (converted, or saved by training) into `policy` at this rank's TP/PP; collective.

    The language model comes from ``path/ckpt/step_{step or latest}`` via
    :func:`dvr1.train.checkpoint.load_checkpoint` (dist_checkpointing reshards any saved TP/PP); the vision tower of
    first-stage ranks from the dist checkpoint when the run that saved it trained the tower (``visual.*`` keys), else
    from ``path/visual.safetensors`` (or `hf_dir`'s ``visual.safetensors`` / HF weights).
    Returns the checkpoint's extra_state dict. Raises CheckpointError (no checkpoint), FileNotFoundError (no vision
    tower source).
    """
    from dvr1.train.checkpoint import CheckpointError, load_checkpoint

    try:
        dist_dir = find_dist_dir(path, step)
        trained = dist_visual_keys(dist_dir)
    except ConversionError:  # no checkpoint: load_checkpoint says so
        dist_dir, trained = None, []
    trainable = policy.vision_trainable
    policy.vision_trainable = trainable and bool(trained)  # a checkpoint without the tower: it comes from hf_dir
    try:
        extra = load_checkpoint(path, [policy], step=step, restore_rng=False)
    finally:
        policy.vision_trainable = trainable
    if extra is None:
        raise CheckpointError(f"{path}: no checkpoint (missing ckpt/latest)")
    if policy.visual is not None:
        if trained:  # saved by a run that trained the tower (model.freeze_vision=false): its weights win
            if not trainable:  # (a trainable policy loaded them with the language model already)
                policy.visual.load_state_dict({k[len("visual."):]: t for k, t in iter_dist_visual(dist_dir)},
                                              strict=True)
        else:
            get, keys = _visual_source(hf_dir or path)
            policy.visual.load_state_dict({k[len("visual."):]: get(k) for k in keys}, strict=True)
        policy.vision_updated()
    return extra


def dist_visual_keys(dist_dir: str) -> list[str]:
    """The ``visual.*`` keys of a dist checkpoint: present when the run trained the vision tower (its
    `Qwen25VLPolicy.sharded_state_dict` then holds it), else empty."""
    from megatron.core import dist_checkpointing

    return sorted(k for k in dist_checkpointing.load_tensors_metadata(dist_dir) if k.startswith("visual."))


def iter_dist_visual(dist_dir: str, dtype: Optional[torch.dtype] = None):
    """Yield ``(HF name visual.*, full tensor)`` of the trained vision tower in a dist checkpoint, one at a time
    (`dist_checkpointing.load` of each replicated tensor)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    meta = dist_checkpointing.load_tensors_metadata(dist_dir)
    for key in dist_visual_keys(dist_dir):
        sh = ShardedTensor.from_rank_offsets(key, torch.empty(meta[key].global_shape, dtype=meta[key].dtype))
        t = dist_checkpointing.load({"t": sh}, dist_dir, validate_access_integrity=False)["t"]
        yield key, (t if dtype is None else t.to(dtype))


def _visual_source(path: str):
    """(get, names) of the vision tower tensors: ``path/visual.safetensors`` or the HF checkpoint in `path`."""
    if os.path.isfile(os.path.join(path, VISUAL_FILE)):
        files = SafetensorsFiles(path, [VISUAL_FILE])
    else:
        try:
            files = SafetensorsFiles(path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{path}: no {VISUAL_FILE} and no HF weights to take the vision tower from") \
                from e
    return files.get, [k for k in files.keys() if k.startswith("visual.")]


# ---- megatron -> HF ---------------------------------------------------------------------------------------------

def find_dist_dir(path: str, step: Optional[int] = None) -> str:
    """The megatron dist checkpoint directory inside `path`: `path` itself if it holds ``metadata.json``, else
    ``path/ckpt/step_{step or latest}/dist``. Raises ConversionError naming what is missing."""
    from dvr1.train.checkpoint import latest_step

    if os.path.isfile(os.path.join(path, "metadata.json")) and os.path.isfile(os.path.join(path, ".metadata")):
        return path
    if step is None:
        step = latest_step(path)
        if step is None:
            raise ConversionError(f"{path}: not a dist checkpoint (no metadata.json) and no ckpt/latest")
    d = os.path.join(path, "ckpt", f"step_{step}", "dist")
    if not os.path.isfile(os.path.join(d, "metadata.json")):
        raise ConversionError(f"{d}: missing metadata.json (incomplete or absent checkpoint for step {step})")
    return d


def _lm_key_order(keys, n_layers: int) -> list[tuple[str, Optional[int]]]:
    """(key, layer) in HF order: embedding, layer 0 tensors, ..., layer L-1, final norm, output layer."""
    layer_keys = sorted(k for k in keys if k.startswith("lm.decoder.layers."))
    head = [(k, None) for k in ("lm.embedding.word_embeddings.weight",) if k in keys]
    tail = [(k, None) for k in ("lm.decoder.final_layernorm.weight", "lm.output_layer.weight") if k in keys]
    other = sorted(set(keys) - {k for k, _ in head + tail} - set(layer_keys))
    if other:
        raise ConversionError(f"unknown language-model tensors in the checkpoint: {other}")
    return head + [(k, i) for i in range(n_layers) for k in layer_keys] + tail


def iter_megatron_lm(dist_dir: str, s: LMShape, dtype: Optional[torch.dtype] = None):
    """Yield ``(hf_name, tensor)`` of the language model in a dist checkpoint, one full (TP=1) tensor at a time.

    Each megatron tensor (one layer's slice for ``lm.decoder.layers.*``) is read with
    ``megatron.core.dist_checkpointing.load`` into a freshly allocated tensor, then mapped by `megatron_to_hf`
    (TE-style names, which are the checkpoint keys). Works for any TP/PP the checkpoint was saved at.
    Raises ConversionError for a checkpoint whose layer count disagrees with `s`.
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    meta = dist_checkpointing.load_tensors_metadata(dist_dir)
    lm = {k: v for k, v in meta.items() if k.startswith("lm.")}
    for k, v in lm.items():
        if k.startswith("lm.decoder.layers.") and v.global_shape[0] != s.num_layers:
            raise ConversionError(f"{dist_dir}: {k} stacks {v.global_shape[0]} layers but config.json has "
                                  f"num_hidden_layers={s.num_layers}")
    for key, layer in _lm_key_order(lm, s.num_layers):
        shape, kdtype = lm[key].global_shape, lm[key].dtype
        if layer is None:
            sh = ShardedTensor.from_rank_offsets(key, torch.empty(shape, dtype=kdtype))
            name = key[3:]
        else:
            # the layer as a [1, ...] block of the stacked [L, ...] tensor (no prepended axis: megatron's
            # legacy prepend-axis path needs one process per other chunk owner)
            sh = ShardedTensor.from_rank_offsets(key, torch.empty((1, *shape[1:]), dtype=kdtype),
                                                 (0, layer, shape[0]))
            name = "decoder.layers.0." + key[len("lm.decoder.layers."):]
        t = dist_checkpointing.load({"t": sh}, dist_dir, validate_access_integrity=False)["t"]
        if layer is not None:
            t = t[0]
        if dtype is not None:
            t = t.to(dtype)
        yield from megatron_to_hf({name: t}, s, layer_offset=layer or 0, te=True)


class _ShardedSafetensorsWriter:
    """HF sharded safetensors: ``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``.

    Holds at most one output shard in memory (tensors are added until the next would pass `max_bytes`; a tensor
    larger than `max_bytes` gets a shard of its own), as transformers' ``save_pretrained`` shards.
    """

    def __init__(self, out_dir: str, max_bytes: int):
        self.out_dir, self.max_bytes = out_dir, max_bytes
        self.cur: dict[str, torch.Tensor] = {}
        self.cur_bytes, self.total = 0, 0
        self.files: list[list[str]] = []

    def add(self, name: str, t: torch.Tensor) -> None:
        if name in self.cur or any(name in f for f in self.files):
            raise ConversionError(f"tensor {name!r} written twice")
        nbytes = t.numel() * t.element_size()
        if self.cur and self.cur_bytes + nbytes > self.max_bytes:
            self._flush()
        own = t.is_contiguous() and t.storage_offset() == 0 and t.untyped_storage().nbytes() == nbytes
        self.cur[name] = t if own else t.clone()  # views (q/k/v, gate/up) share the megatron tensor's storage
        self.cur_bytes += nbytes
        self.total += nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        i = len(self.files) + 1
        save_file(self.cur, os.path.join(self.out_dir, f"part-{i:05d}.tmp"), metadata={"format": "pt"})
        self.files.append(list(self.cur))
        self.cur, self.cur_bytes = {}, 0

    def finish(self) -> list[str]:
        if self.cur:
            self._flush()
        n = len(self.files)
        names, weight_map = [], {}
        for i, keys in enumerate(self.files, 1):
            fn = f"model-{i:05d}-of-{n:05d}.safetensors"
            os.replace(os.path.join(self.out_dir, f"part-{i:05d}.tmp"), os.path.join(self.out_dir, fn))
            names.append(fn)
            weight_map.update({k: fn for k in keys})
        with open(os.path.join(self.out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
        return names


def convert_megatron_to_hf(src: str, out: str, hf_dir: Optional[str] = None, step: Optional[int] = None,
                           max_shard_size="5GB", dtype=None, progress: bool = True) -> str:
    """Convert a megatron-core dist checkpoint of the policy into a HF Qwen2.5-VL directory transformers loads.

    Args:
        src: a converted directory or a training stage directory (``ckpt/latest``), or a ``dist`` directory.
        out: output directory (written as ``out.tmp`` then renamed).
        hf_dir: where config.json, tokenizer/processor files and the vision tower come from (default `src`,
            which a converted directory provides; a training run passes the HF directory it started from). A
            checkpoint of a run that trained the tower (``visual.*`` keys in the dist checkpoint) gives its own.
        step: checkpoint step (default: ckpt/latest).
        max_shard_size: bytes per safetensors shard (int, or "5GB" / "2GiB" as in transformers).
        dtype: None/"auto" keeps the checkpoint's dtype; else cast every tensor.
    Returns:
        `out`.
    Raises:
        ConversionError: no dist checkpoint / config, tensors missing or unknown, layer-count mismatch.
    """
    from transformers.utils.hub import convert_file_size_to_int

    from dvr1.models.qwen2_5_vl import lm_shape, load_hf_config

    _ensure_single_process()
    dtype = parse_dtype(dtype)
    hf_dir = hf_dir or src
    dist_dir = find_dist_dir(src, step)
    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        raise ConversionError(f"{hf_dir}: no config.json (pass hf_dir=the HF checkpoint the run started from)")
    cfg = load_hf_config(hf_dir)
    s = lm_shape(cfg)
    expected = {n for n, _ in megatron_to_hf(dict(meta_policy(cfg).lm.named_parameters()), s)}

    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    writer = _ShardedSafetensorsWriter(tmp, convert_file_size_to_int(max_shard_size))
    written, out_dtype = set(), None
    n_total = len(expected)
    with _tqdm(progress, total=n_total, desc="megatron->hf", unit="tensor") as bar:
        for name, t in iter_megatron_lm(dist_dir, s, dtype):
            if name not in expected:
                raise ConversionError(f"{dist_dir}: maps to {name!r}, which config.json's model does not have")
            writer.add(name, t)
            written.add(name)
            out_dtype = out_dtype or t.dtype
            bar.update(1)
    missing = sorted(expected - written)
    if missing:
        raise ConversionError(f"{dist_dir}: language-model tensors missing from the checkpoint: {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}")
    if dist_visual_keys(dist_dir):  # a run that trained the tower saved it: take it from there
        for k, t in _tqdm(progress, iterable=iter_dist_visual(dist_dir, dtype), desc="vision tower", unit="tensor"):
            writer.add(k, t)
    else:
        get, vis = _visual_source(hf_dir)
        if not vis:
            raise ConversionError(f"{hf_dir}: no vision tower tensors (visual.*)")
        for k in _tqdm(progress, iterable=vis, desc="vision tower", unit="tensor"):
            writer.add(k, get(k) if dtype is None else get(k).to(dtype))
    files = writer.finish()
    _copy_side_files(hf_dir, tmp)
    if dtype is not None:
        _set_config_dtype(os.path.join(tmp, "config.json"), dtype)
    with open(os.path.join(tmp, CONVERT_INFO), "w") as f:
        json.dump({"direction": "megatron_to_hf", "source": os.path.abspath(dist_dir), "hf_dir":
                   os.path.abspath(hf_dir), "files": files, "total_size": writer.total,
                   "dtype": str(out_dtype).removeprefix("torch.")}, f, indent=1)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _set_config_dtype(path: str, dtype: torch.dtype) -> None:
    """Rewrite the dtype fields of a copied config.json (top level and text_config) after a cast."""
    with open(path) as f:
        cfg = json.load(f)
    name = str(dtype).removeprefix("torch.")
    for d in (cfg, cfg.get("text_config") or {}):
        for key in ("dtype", "torch_dtype"):
            if key in d:
                d[key] = name
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


# ---- parameter counts of the presets ----------------------------------------------------------------------------

def param_counts(hf_config) -> tuple[int, int]:
    """(megatron-core policy, HF Qwen2_5_VLForConditionalGeneration) parameter counts, both built on ``meta``.

    The policy is TP=1/PP=1 (GPTModel + HF vision tower); tied embeddings count once on both sides.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    _ensure_single_process()
    policy = meta_policy(hf_config)
    with torch.device("meta"):
        hf = Qwen2_5_VLForConditionalGeneration(hf_config)
    return sum(p.numel() for p in policy.parameters()), sum(p.numel() for p in hf.parameters())


def param_table(names=("3B", "7B", "32B", "72B")) -> str:
    """Markdown table of `param_counts` for the Qwen2.5-VL presets (``dvr1.models.presets``)."""
    from dvr1.models.presets import preset_config

    rows = ["| preset | megatron-core (GPTModel + vision) | Hugging Face | equal |", "|---|---:|---:|---|"]
    for n in names:
        m, h = param_counts(preset_config(n))
        rows.append(f"| Qwen2.5-VL-{n} | {m:,} | {h:,} | {'yes' if m == h else 'NO'} |")
    return "\n".join(rows)


# ---- command line -----------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvr1 convert", description="Qwen2.5-VL checkpoint conversion "
                                "(Hugging Face <-> megatron-core dist checkpoint, any TP/PP)")
    sub = p.add_subparsers(dest="direction", required=True)
    a = sub.add_parser("hf-to-megatron", help="HF directory -> megatron-core dist checkpoint")
    a.add_argument("src", help="HF Qwen2.5-VL checkpoint directory")
    a.add_argument("out", help="output directory")
    a.add_argument("--tp", type=int, default=1)
    a.add_argument("--pp", type=int, default=1)
    a.add_argument("--dtype", default="auto", help="auto | bf16 | fp32 | fp16 (language model)")
    a.add_argument("--no-progress", action="store_true")
    b = sub.add_parser("megatron-to-hf", help="megatron-core dist checkpoint -> HF sharded safetensors")
    b.add_argument("src", help="converted directory, training stage directory (ckpt/latest) or a dist directory")
    b.add_argument("out", help="output directory")
    b.add_argument("--hf-dir", default=None, help="config/tokenizer/vision tower source (default: src)")
    b.add_argument("--step", type=int, default=None)
    b.add_argument("--max-shard-size", default="5GB")
    b.add_argument("--dtype", default="auto")
    b.add_argument("--no-progress", action="store_true")
    sub.add_parser("param-table", help="parameter counts of the 3B/7B/32B/72B presets, megatron-core vs HF (meta)")
    return p


def main(argv=None) -> int:
    """``dvr1 convert {hf-to-megatron,megatron-to-hf,param-table} ...``; returns the exit code."""
    import warnings

    warnings.filterwarnings("ignore", message=".*(Apex|apex|Transformer Engine|TransformerEngine).*")
    # megatron-core 0.16.1 loads through torch DCP's deprecated ShardedTensor / load_state_dict API
    warnings.filterwarnings("ignore", message=".*(Please use DTensor instead|`load_state_dict` is deprecated).*")
    args = _parser().parse_args(argv)
    if args.direction == "hf-to-megatron":
        print(convert_hf_to_megatron(args.src, args.out, args.tp, args.pp, args.dtype, not args.no_progress))
    elif args.direction == "megatron-to-hf":
        print(convert_megatron_to_hf(args.src, args.out, args.hf_dir, args.step, args.max_shard_size, args.dtype,
                                     not args.no_progress))
    else:
        print(param_table())
    return 0


def main_hf_to_megatron(argv=None) -> int:
    """``tools/convert_hf_to_megatron.py SRC OUT [--tp N --pp N --dtype D]``."""
    return main(["hf-to-megatron", *(argv if argv is not None else __import__("sys").argv[1:])])


def main_megatron_to_hf(argv=None) -> int:
    """``tools/convert_megatron_to_hf.py SRC OUT [--hf-dir D --step N --max-shard-size 5GB --dtype D]``."""
    return main(["megatron-to-hf", *(argv if argv is not None else __import__("sys").argv[1:])])
