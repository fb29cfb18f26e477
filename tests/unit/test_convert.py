"""HF <-> megatron-core dist checkpoint conversion (dvr1.models.convert) on tiny random Qwen2.5-VL checkpoints.

Real numbers only: a converted checkpoint (written for TP=2/PP=2, TP=4 or PP=2 by one process) loads with
megatron's dist_checkpointing into the TP=1 policy with every parameter bit-identical to the direct HF load, and the
policy's logits equal transformers' (fp32, <= 1e-4) on the same video + text input; HF -> megatron -> HF gives
bit-identical tensors in sharded safetensors that transformers loads (identical logits); the written DCP metadata
equals megatron-core's own save; the four presets have equal parameter counts on both sides; bad layouts and
checkpoints fail with messages naming the field / file.
"""

import json
import os
import shutil

import pytest
import torch

from dvr1.models.convert import (
    ConversionError,
    convert_hf_to_megatron,
    convert_megatron_to_hf,
    load_megatron_checkpoint,
    main,
    param_counts,
)
from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
from dvr1.models.safetensors_io import SafetensorsFiles
from tests.distributed.scripts.convert_common import (
    VARIANTS,
    dcp_summary,
    hf_logits,
    make_variant,
    model_inputs,
    policy_logits,
)

# the layout each variant is converted to (TP must divide the KV heads: 2, 4, 1)
LAYOUT = {"tied_gqa2": (2, 2), "untied_gqa1": (4, 1), "tied_gqa4": (1, 2)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, parallel_state_1):
    """variant -> (hf dir, converted dir, hf->megatron->hf dir); the first conversion goes through the CLI."""
    out = {}
    for i, name in enumerate(VARIANTS):
        root = tmp_path_factory.mktemp(name)
        hf = make_variant(str(root / "hf"), name)
        tp, pp = LAYOUT[name]
        conv, back = str(root / "megatron"), str(root / "back")
        if i == 0:
            assert main(["hf-to-megatron", hf, conv, "--tp", str(tp), "--pp", str(pp), "--no-progress"]) == 0
        else:
            convert_hf_to_megatron(hf, conv, tp=tp, pp=pp, progress=False)
        convert_megatron_to_hf(conv, back, max_shard_size="200KB", progress=False)
        out[name] = (hf, conv, back)
    return out


def _policy_from(path_hf, conv=None):
    cfg = load_hf_config(path_hf)
    policy = Qwen25VLPolicy(cfg)
    if conv is None:
        load_hf_weights(policy, path_hf)
    else:
        load_megatron_checkpoint(policy, conv)
    return policy.eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_converted_checkpoint_loads_bit_identical_and_logits_equal_hugging_face(ckpts, variant):
    hf, conv, _ = ckpts[variant]
    policy = _policy_from(hf, conv)
    direct = _policy_from(hf)
    got, ref = policy.state_dict(), direct.state_dict()
    tensors = [k for k, v in ref.items() if isinstance(v, torch.Tensor)]
    assert len(tensors) > 40
    assert [k for k in tensors if not torch.equal(got[k], ref[k])] == []
    x = model_inputs(load_hf_config(hf))
    out, want = policy_logits(policy, x), hf_logits(hf, x)
    assert out.shape == want.shape
    assert (out - want).abs().max().item() <= 1e-4


def test_converted_layout_and_side_files(ckpts):
    hf, conv, _ = ckpts["tied_gqa2"]
    dist = os.path.join(conv, "ckpt", "step_0", "dist")
    assert sorted(f for f in os.listdir(dist) if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert json.load(open(os.path.join(dist, "metadata.json")))["sharded_backend"] == "torch_dist"
    meta = json.load(open(os.path.join(conv, "ckpt", "step_0", "meta.json")))
    assert (meta["world_size"], meta["tp_size"], meta["pp_size"]) == (None, 2, 2)
    assert open(os.path.join(conv, "ckpt", "latest")).read().strip() == "0"
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "visual.safetensors"):
        assert os.path.isfile(os.path.join(conv, f)), f
    assert not os.path.exists(os.path.join(conv, "model.safetensors"))
    # TP=2 cuts: QKV rows of whole KV groups, fc1 = gate and up halves each cut in two, linear_proj on dim 1
    s = dcp_summary(dist)
    L = 4
    assert s["lm.decoder.layers.self_attention.linear_qkv.weight"][2] == sorted(
        ((l, r * 128, 0), (1, 128, 128)) for l in range(L) for r in range(2))
    assert s["lm.decoder.layers.mlp.linear_fc1.weight"][2] == sorted(
        ((l, r * 176, 0), (1, 176, 128)) for l in range(L) for r in range(4))
    assert s["lm.decoder.layers.self_attention.linear_proj.weight"][2] == sorted(
        ((l, 0, r * 64), (1, 128, 64)) for l in range(L) for r in range(2))
    assert s["lm.decoder.layers.self_attention.linear_qkv.layer_norm_weight"][2] == [((l, 0), (1, 128))
                                                                                    for l in range(L)]
    assert "lm.output_layer.weight" not in s  # tied: the embedding is the output layer


def test_metadata_equals_megatron_save_at_tp1(ckpts, tmp_path):
    from dvr1.train.checkpoint import save_checkpoint

    hf = ckpts["untied_gqa1"][0]
    conv = str(tmp_path / "conv11")
    convert_hf_to_megatron(hf, conv, tp=1, pp=1, progress=False)
    policy = _policy_from(hf)
    save_checkpoint(str(tmp_path / "run"), 0, [policy])
    mine, theirs = (os.path.join(d, "ckpt", "step_0", "dist") for d in (conv, str(tmp_path / "run")))
    assert dcp_summary(mine) == dcp_summary(theirs)
    assert torch.load(os.path.join(mine, "common.pt")) == torch.load(os.path.join(theirs, "common.pt"))
    assert open(os.path.join(mine, "metadata.json")).read() == open(os.path.join(theirs, "metadata.json")).read()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_megatron_hf_is_bit_identical(ckpts, variant):
    hf, _, back = ckpts[variant]
    a, b = SafetensorsFiles(hf), SafetensorsFiles(back)
    assert set(a.keys()) == set(b.keys())
    for k in a.keys():
        x, y = a.get(k), b.get(k)
        assert x.dtype == y.dtype and torch.equal(x, y), k
    index = json.load(open(os.path.join(back, "model.safetensors.index.json")))
    files = sorted(set(index["weight_map"].values()))
    n = len(files)
    assert n > 3 and files == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert index["metadata"]["total_size"] == sum(a.get(k).numel() * a.get(k).element_size() for k in a.keys())
    for f in files:  # max_shard_size=200KB: a shard holds several tensors within it, or one larger tensor
        held = [k for k, v in index["weight_map"].items() if v == f]
        nbytes = sum(b.get(k).numel() * b.get(k).element_size() for k in held)
        assert nbytes <= 200_000 or len(held) == 1, (f, nbytes, held)
    assert max(len([k for k, v in index["weight_map"].items() if v == f]) for f in files) > 1
    for f in ("config.json", "tokenizer.json", "generation_config.json", "chat_template.jinja"):
        assert open(os.path.join(back, f), "rb").read() == open(os.path.join(hf, f), "rb").read(), f


def test_transformers_loads_the_exported_checkpoint(ckpts):
    from transformers import AutoConfig

    hf, _, back = ckpts["untied_gqa1"]
    a, b = (AutoConfig.from_pretrained(d).to_dict() for d in (back, hf))
    a.pop("_name_or_path"), b.pop("_name_or_path")
    assert a == b
    x = model_inputs(load_hf_config(hf))
    assert torch.equal(hf_logits(back, x), hf_logits(hf, x))


def test_dtype_cast_round_trip(ckpts, tmp_path):
    hf = ckpts["tied_gqa4"][0]
    conv, back = str(tmp_path / "bf16"), str(tmp_path / "back")
    convert_hf_to_megatron(hf, conv, tp=1, pp=1, dtype="bf16", progress=False)
    s = dcp_summary(os.path.join(conv, "ckpt", "step_0", "dist"))
    assert {v[1] for v in s.values() if v != "bytes"} == {torch.bfloat16}
    convert_megatron_to_hf(conv, back, progress=False)
    a, b = SafetensorsFiles(hf), SafetensorsFiles(back)
    for k in a.keys():
        if k.startswith("visual."):  # the vision tower is carried as-is
            assert torch.equal(a.get(k), b.get(k)), k
        else:
            assert b.get(k).dtype == torch.bfloat16 and torch.equal(a.get(k).bfloat16(), b.get(k)), k


def test_bad_layouts_and_checkpoints(ckpts, tmp_path):
    hf, conv, _ = ckpts["tied_gqa4"]
    with pytest.raises(ConversionError, match=r"^config.json text_config.num_key_value_heads=1 is not divisible "
                                              r"by tp=2$"):
        convert_hf_to_megatron(hf, str(tmp_path / "x"), tp=2, progress=False)
    with pytest.raises(ConversionError, match=r"^config.json text_config.num_hidden_layers=2 is not divisible "
                                              r"by pp=4$"):
        convert_hf_to_megatron(hf, str(tmp_path / "x"), pp=4, progress=False)
    with pytest.raises(ConversionError, match=r"^dtype 'int8' is not one of"):
        convert_hf_to_megatron(hf, str(tmp_path / "x"), dtype="int8", progress=False)
    # a HF checkpoint missing one tensor
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(hf, broken)
    sd = load_file(str(broken / "model.safetensors"))
    name = next(k for k in sd if k.endswith("layers.1.mlp.up_proj.weight"))
    del sd[name]
    save_file(sd, str(broken / "model.safetensors"))
    with pytest.raises(KeyError, match="tensor 'model.layers.1.mlp.up_proj.weight' not found"):
        convert_hf_to_megatron(str(broken), str(tmp_path / "x"), progress=False)
    assert not os.path.exists(tmp_path / "x")
    # megatron -> HF: no checkpoint; a config with another layer count
    with pytest.raises(ConversionError, match="not a dist checkpoint .no metadata.json. and no ckpt/latest"):
        convert_megatron_to_hf(str(tmp_path), str(tmp_path / "y"), hf_dir=hf, progress=False)
    other = ckpts["tied_gqa2"][0]  # 4 layers; the checkpoint stacks 2
    with pytest.raises(ConversionError, match=r"stacks 2 layers but config.json has num_hidden_layers=4"):
        convert_megatron_to_hf(conv, str(tmp_path / "y"), hf_dir=other, progress=False)


@pytest.mark.parametrize("name", ["3B", "7B", "32B", "72B"])
def test_preset_parameter_counts_equal_on_meta(parallel_state_1, name):
    from dvr1.models.presets import preset_config

    megatron, hf = param_counts(preset_config(name))
    print(f"Qwen2.5-VL-{name}: megatron-core {megatron:,} / Hugging Face {hf:,}")
    assert megatron == hf
    assert megatron > {"3B": 3e9, "7B": 7e9, "32B": 32e9, "72B": 72e9}[name]
