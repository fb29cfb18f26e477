"""Config: every example loads, overrides apply, and bad values fail with the field named."""

from pathlib import Path

import pytest

from dvr1.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["tiny_cpu.yaml", "smoke.yaml", "qwen2_5_vl_7b.yaml", "qwen2_5_vl_72b.yaml"])
def test_examples_load(name):
    cfg = load_config(str(REPO / "examples" / name), ["rollout.engine=native"])
    assert cfg.rollout.group_size >= 2 and cfg.parallel.tp >= 1


def test_overrides_and_types():
    cfg = load_config(str(REPO / "examples/tiny_cpu.yaml"), ["rl.steps=7", "algo.name=grpo", "algo.clip=true"])
    assert (cfg.rl.steps, cfg.algo.name, cfg.algo.clip) == (7, "grpo", True)
    with pytest.raises(Exception, match="Key 'stepz' not in 'RLConfig'"):
        load_config(None, ["rl.stepz=3"])
    with pytest.raises(Exception, match="rl.steps"):
        load_config(None, ["rl.steps=many"])


@pytest.mark.parametrize("override,message", [
    ("algo.name=ppo", "algo.name='ppo': must be one of reg_grpo, grpo"),
    ("rollout.group_size=1", "rollout.group_size=1: a group needs at least 2 responses"),
    ("parallel.tp=0", "parallel.tp=0: must be >= 1"),
    ("rollout.engine=sglang", "rollout.engine='sglang': must be one of native, vllm"),
    ("model.fp8=e5m2", "model.fp8='e5m2': must be one of e4m3, hybrid"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


def test_vidchain_section():
    """`vidchain.*` keys are part of RunConfig: YAML section, overrides, unknown keys and bad chains named."""
    cfg = load_config(str(REPO / "examples/vidchain_tiny.yaml"), ["vidchain.mdpo_steps=7", "vidchain.beta=0.25"])
    assert (cfg.vidchain.mdpo_steps, cfg.vidchain.beta, cfg.vidchain.sft_steps) == (7, 0.25, 300)  # 300: the YAML
    assert load_config(None).vidchain.mdpo_chains == ["count_seg_cap", "cap_seg"]
    with pytest.raises(Exception, match="Key 'mdpo_stepz' not in 'VidChainOptions'"):
        load_config(None, ["vidchain.mdpo_stepz=3"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["vidchain.mdpo_chains=[cap_seg,caption]"])
    assert str(e.value) == ("vidchain.mdpo_chains: unknown chain 'caption'; must be one of count_seg_cap, cap_seg, "
                            "ground")


def test_vllm_engine_sizes():
    """vLLM shares the trainer's ranks: its TP size is 1 or the trainer's."""
    cfg = load_config(None, ["rollout.engine=vllm", "parallel.tp=2", "rollout.tensor_parallel_size=2"])
    assert (cfg.rollout.engine, cfg.rollout.tensor_parallel_size) == ("vllm", 2)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["rollout.engine=vllm", "parallel.tp=2", "rollout.tensor_parallel_size=4"])
    assert str(e.value) == ("rollout.tensor_parallel_size=4: must be 1 or parallel.tp=2 (vLLM shares the trainer's "
                            "ranks)")


def test_mrope_rule_follows_the_rollout_engine():
    """model.mrope_after_video=auto: the trainer uses the positions the rollout engine samples with."""
    from dvr1.config import mrope_after_video

    assert mrope_after_video(load_config(None)) == "transformers"
    assert mrope_after_video(load_config(None, ["rollout.engine=vllm"])) == "qwen"
    assert mrope_after_video(load_config(None, ["rollout.engine=vllm", "model.mrope_after_video=transformers"])) \
        == "transformers"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.mrope_after_video=max"])
    assert str(e.value) == "model.mrope_after_video='max': must be one of auto, transformers, qwen"
