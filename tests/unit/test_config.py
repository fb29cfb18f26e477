"""Config: every example loads, overrides apply, and bad values fail with the field named."""

from pathlib import Path

import pytest

import yaml
from omegaconf import OmegaConf

from dvr1.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def _leaves(node, prefix=""):
    """(dotted key, value) of every leaf of a YAML mapping."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


EXAMPLES = sorted(p.name for p in (REPO / "examples").glob("*.yaml"))
GRIDS = sorted(p.name for p in (REPO / "examples" / "ablations").glob("*.yaml"))


def test_every_example_is_listed():
    assert {"tiny_cpu.yaml", "smoke.yaml", "qwen2_5_vl_7b.yaml", "qwen2_5_vl_72b.yaml", "vidchain_tiny.yaml",
            "paper_3b.yaml", "paper_7b.yaml"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", ["paper_3b.yaml", "paper_7b.yaml"])
def test_paper_examples_are_the_papers_setting(name):
    """DeepVideo-R1 at 3B on SEED-Bench-R1: G = 8, beta = 0.1, Reg-GRPO + DA-Aug, 16 frames of <= 252 x 252."""
    cfg = load_config(str(REPO / "examples" / name))
    assert (cfg.rollout.group_size, cfg.algo.beta, cfg.algo.name, cfg.da_aug.enabled) == (8, 0.1, "reg_grpo", True)
    assert (cfg.video.num_frames, cfg.video.max_pixels) == (16, 252 * 252)
    assert cfg.model.path.endswith(("Qwen2.5-VL-3B-Instruct", "Qwen2.5-VL-7B-Instruct"))
    assert "paper_table4.yaml" in GRIDS


@pytest.mark.parametrize("name", EXAMPLES)
def test_examples_load(name):
    """Each example loads as written (its vLLM settings too) and every key it sets has the file's value."""
    path = REPO / "examples" / name
    cfg = load_config(str(path))
    raw = yaml.safe_load(path.read_text())
    leaves = list(_leaves(raw))
    assert leaves
    for key, value in leaves:
        got = OmegaConf.select(cfg, key)
        got = OmegaConf.to_container(got) if OmegaConf.is_config(got) else got
        assert got == value, f"{name}: {key} = {got!r}, the file says {value!r}"


@pytest.mark.parametrize("name", GRIDS)
def test_ablation_grids_load(name, monkeypatch):
    """Every run of every ablation grid is a valid config, and each arm's overrides take effect."""
    from dvr1.ablate import expand_grid, load_grid

    monkeypatch.chdir(REPO)  # grid `base:` paths are relative to the repository root
    grid = load_grid(str(REPO / "examples" / "ablations" / name))
    runs = expand_grid(grid)
    assert len(runs) == len(grid.arms) * len(grid.seeds)
    for run in runs:
        cfg = load_config(grid.base, run.overrides)
        assert cfg.seed == run.seed and cfg.run_dir == run.run_dir
        for o in grid.arms[run.arm]:
            key, value = o.split("=", 1)
            assert str(OmegaConf.select(cfg, key)).lower() == yaml.safe_load(value).__str__().lower(), (run.arm, o)


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
    # range checks at load time (each of these used to pass and fail or do nothing later)
    ("video.max_frames=1", "video.max_frames=1: must be >= 2 (frames go in pairs, the temporal patch)"),
    ("video.num_frames=1", "video.num_frames=1: must be 0 (fps sampling) or >= 2"),
    ("rl.steps=-1", "rl.steps=-1: must be >= 0"),
    ("model.tiny_vision_steps=-5", "model.tiny_vision_steps=-5: must be >= 0"),
    ("model.tiny_vision_max_objects=0", "model.tiny_vision_max_objects=0: must be >= 1"),
    ("model.tiny_copy_steps=-1", "model.tiny_copy_steps=-1: must be >= 0"),
    ("model.tiny_answer_steps=-2", "model.tiny_answer_steps=-2: must be >= 0"),
    ("model.tiny_reading_lr=0", "model.tiny_reading_lr=0.0: must be > 0"),
    ("algo.eps_rho=0", "algo.eps_rho=0.0: must be > 0 with algo.normalize_logratio=true"),
    ("algo.beta=-0.1", "algo.beta=-0.1: must be >= 0"),
    ("algo.ddof=8", "algo.ddof=8: must be < rollout.group_size=8"),
    ("rollout.top_p=0", "rollout.top_p=0.0: must be in (0, 1]"),
    ("rollout.top_p=1.5", "rollout.top_p=1.5: must be in (0, 1]"),
    ("da_aug.max_level=0", "da_aug.max_level=0: must be >= 1"),
    ("da_aug.margin=-1", "da_aug.margin=-1.0: must be >= 0"),
    ("da_aug.r_ref=nan", "da_aug.r_ref=nan: must be a finite number"),
    ("da_aug.mask_fraction=1.0", "da_aug.mask_fraction=1.0: must be in [0, 0.99]"),
    ("da_aug.scale=log", "da_aug.scale='log': must be one of adaptive, fixed"),
    ("da_aug.directions=sideways", "da_aug.directions='sideways': must be one of both, up, down"),
    ("da_aug.reference=x", "da_aug.reference='x': must be one of relative, absolute"),
    ("reward.iou=-1", "reward.iou=-1.0: must be >= 0"),
    ("video.max_pixels=100", "video.max_pixels=100: must be >= video.min_pixels=3136"),
    ("rl.save_every=0", "rl.save_every=0: must be >= 1"),
    ("sft.lr_schedule=linear", "sft.lr_schedule='linear': must be one of constant, cosine"),
    ("rl.lr_schedule=wsd", "rl.lr_schedule='wsd': must be one of constant, cosine"),
    ("sft.min_lr_ratio=1.5", "sft.min_lr_ratio=1.5: must be in [0, 1]"),
    ("rl.min_lr_ratio=-0.1", "rl.min_lr_ratio=-0.1: must be in [0, 1]"),
    ("sft.vision_lr=-1e-4", "sft.vision_lr=-0.0001: must be >= 0"),
    ("rl.vision_lr=nan", "rl.vision_lr=nan: must be a finite number"),
    ("model.tiny_rope_theta=2.5", "model.tiny_rope_theta=2.5: must be a whole number >= 1"),
    ("model.tiny_rope_theta=0", "model.tiny_rope_theta=0.0: must be a whole number >= 1"),
    ("model.tiny_mrope_section=[2,4,9]", "model.tiny_mrope_section=[2, 4, 9]: must be 3 positive integers [t, h, w] "
                                         "summing to 16"),
    ("model.tiny_mrope_section=[0,6,10]", "model.tiny_mrope_section=[0, 6, 10]: must be 3 positive"),
])
def test_bad_values_name_the_field(override, message):
    """Every range/choice error is raised when the config loads, naming the field."""
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


def test_lr_schedule_fields():
    """Defaults: constant, min_lr_ratio 0, vision_lr None (= the stage's lr); cosine needs steps after the warmup
    (a 0-step stage never schedules anything, so it passes)."""
    cfg = load_config(None, [])
    for stage in (cfg.sft, cfg.rl):
        assert (stage.lr_schedule, stage.min_lr_ratio, stage.vision_lr) == ("constant", 0.0, None)
    cfg = load_config(None, ["sft.lr_schedule=cosine", "sft.min_lr_ratio=1", "rl.vision_lr=3e-6"])
    assert (cfg.sft.lr_schedule, cfg.sft.min_lr_ratio, cfg.rl.vision_lr) == ("cosine", 1.0, 3e-6)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["sft.lr_schedule=cosine", "sft.steps=20", "sft.warmup=20"])
    assert str(e.value) == ("sft.warmup=20: must be < sft.steps=20 with sft.lr_schedule=cosine (the decay follows the "
                            "warmup)")
    load_config(None, ["sft.lr_schedule=cosine", "sft.steps=21", "sft.warmup=20"])
    load_config(None, ["sft.lr_schedule=cosine", "sft.steps=0"])
    load_config(None, ["sft.steps=5", "sft.warmup=20"])  # constant: a warmup longer than the stage is allowed


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
    assert load_config(None).vidchain.eval_split == "test"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["vidchain.eval_split=train"])
    assert str(e.value) == "vidchain.eval_split='train': must be 'val' or 'test'"


def test_vllm_engine_sizes():
    """vLLM shares the trainer's ranks: its TP size is 1 or the trainer's."""
    cfg = load_config(None, ["rollout.engine=vllm", "parallel.tp=2", "rollout.tensor_parallel_size=2"])
    assert (cfg.rollout.engine, cfg.rollout.tensor_parallel_size) == ("vllm", 2)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["rollout.engine=vllm", "parallel.tp=2", "rollout.tensor_parallel_size=4"])
    assert str(e.value) == ("rollout.tensor_parallel_size=4: must be 1 or parallel.tp=2 (vLLM shares the trainer's "
                            "ranks)")


def test_mrope_rule_is_one_for_both_engines():
    """model.mrope_rule: Qwen2.5-VL's original rule by default whatever the engine (the native sampler and vLLM use
    the same positions); transformers 5.19's rule only by name, and never with vLLM (which cannot sample with it)."""
    assert load_config(None).model.mrope_rule == "qwen"
    assert load_config(None, ["rollout.engine=vllm"]).model.mrope_rule == "qwen"
    assert load_config(None, ["model.mrope_rule=transformers5"]).model.mrope_rule == "transformers5"


def test_eval_engine_defaults_to_the_rollout_engine():
    from dvr1.config import eval_engine

    assert eval_engine(load_config(None)) == "native"
    assert eval_engine(load_config(None, ["rollout.engine=vllm"])) == "vllm"
    assert eval_engine(load_config(None, ["rollout.engine=vllm", "eval.engine=native"])) == "native"
    assert eval_engine(load_config(None, ["eval.engine=vllm"])) == "vllm"
    with pytest.raises(ConfigError) as e:  # an eval-only vLLM engine has the same TP constraint
        load_config(None, ["eval.engine=vllm", "parallel.tp=2", "rollout.tensor_parallel_size=4"])
    assert str(e.value).startswith("rollout.tensor_parallel_size=4: must be 1 or parallel.tp=2")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["eval.engine=hf"])
    assert str(e.value) == "eval.engine='hf': must be one of auto, native, vllm"

    with pytest.raises(ConfigError) as e:
        load_config(None, ["rollout.engine=vllm", "model.mrope_rule=transformers5"])
    assert str(e.value) == ("model.mrope_rule='transformers5': rollout.engine=vllm samples with Qwen2.5-VL's "
                            "original rule (vLLM's own mrope), so it needs model.mrope_rule=qwen")
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.mrope_rule=auto"])
    assert str(e.value) == "model.mrope_rule='auto': must be one of qwen, transformers5"
