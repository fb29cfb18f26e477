"""megatron_patches on a CPU-only host, and the megatron-core features dvr1 builds on them (single process).

Each test compares against an independent plain-PyTorch computation: RNG streams against torch.Generator, the
default causal mask against an explicit one, the PP=1 schedule against a direct forward/backward, KV-cache decoding
against a full forward, the megatron DDP + optimizer step against torch.optim.AdamW + clip_grad_norm_.
"""

import logging

import pytest
import torch

import megatron_patches
from megatron_patches import _torch_view, tensor_type_alias
from megatron_patches.optimizer import clip_grad_by_total_norm_fp32_cpu

DEFAULT_NAMES = [
    "rng_tracker",
    "current_device",
    "causal_mask",
    "pipeline_schedules",
    "optimizer",
    "dist_checkpointing",
    "inference_kv_cache",
    "tied_embeddings",
    "sequence_parallel_norm",
    "softmax_threads",
]


def batch(b=2, s=12, vocab=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (b, s + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), torch.arange(s).expand(b, s)


# ---- apply() -------------------------------------------------------------------------------------------------


def test_apply_lists_default_patches_and_is_idempotent(parallel_state_1):
    from megatron.core.tensor_parallel import mappings

    view = mappings.torch
    assert isinstance(view, _torch_view.TorchView)
    assert megatron_patches.apply(force=True) == DEFAULT_NAMES
    assert megatron_patches.apply(force=True) == DEFAULT_NAMES
    assert mappings.torch is view
    assert set(DEFAULT_NAMES) <= set(megatron_patches.applied())


def test_apply_does_nothing_with_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert megatron_patches.apply() == []


def test_apply_logs_one_line(parallel_state_1, caplog):
    with caplog.at_level(logging.INFO, logger="megatron_patches"):
        megatron_patches.apply(force=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "megatron_patches"]
    assert lines == ["megatron_patches applied: " + ", ".join(DEFAULT_NAMES)]


def test_torch_itself_is_not_changed(parallel_state_1):
    from megatron.core.tensor_parallel import cross_entropy

    assert cross_entropy.torch is torch  # a module no patch targets
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
        torch.cuda.current_device()
    with pytest.raises((AssertionError, RuntimeError)):
        torch.zeros(1, device="cuda")
    assert torch.Tensor.type is tensor_type_alias._ORIGINAL_TYPE
    assert tensor_type_alias.NAME not in megatron_patches.applied()  # opt-in only


def test_torch_view_maps_cuda_devices_to_cpu(parallel_state_1):
    from megatron.core.pipeline_parallel import p2p_communication, schedules

    assert p2p_communication.torch.cuda.current_device() == torch.device("cpu")
    assert p2p_communication.torch.cuda.synchronize() is None
    assert p2p_communication.torch.cuda.is_available() is False  # forwarded, not overridden
    for device in ("cuda", "cuda:1", torch.device("cuda", 0), 0):
        assert schedules.torch.zeros([], dtype=torch.int, device=device).device.type == "cpu"
    assert schedules.torch.tensor([1.5], device="meta").device.type == "meta"  # non-CUDA devices untouched
    assert schedules.torch.nn is torch.nn


def test_torch_view_refuses_foreign_module_attribute():
    import types

    module = types.ModuleType("fake")
    module.torch = object()
    with pytest.raises(TypeError, match=r"megatron_patches: fake.torch is <object object at .*>, expected the torch"):
        _torch_view.install(module, cpu_factories=True)


def test_tensor_type_alias_is_scoped():
    t = torch.ones(2)
    with tensor_type_alias.cuda_spelled_tensor_types():
        assert t.type() == "torch.cuda.FloatTensor"
        assert t.bfloat16().type() == "torch.cuda.BFloat16Tensor"
        assert t.type(torch.float64).dtype == torch.float64  # conversions still work
    assert t.type() == "torch.FloatTensor"

    class Probe:
        def __init__(self, x):
            self.seen = x.type()

    tensor_type_alias._wrap_init(Probe)
    tensor_type_alias._wrap_init(Probe)  # idempotent
    assert Probe(t).seen == "torch.cuda.FloatTensor"
    assert t.type() == "torch.FloatTensor"


# ---- RNG tracker (tensor_parallel/random.py) -------------------------------------------------------------------


def test_rng_tracker_fork_uses_model_parallel_stream(parallel_state_1, caplog):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    from dvr1.parallel.setup import seed_everything

    seed_everything(1234)
    default = torch.Generator().manual_seed(1234)  # data-parallel ("default") state = seed
    tp_stream = torch.Generator().manual_seed(1234 + 2718)  # model-parallel state = seed + 2718 + tp_rank
    with caplog.at_level(logging.WARNING, logger="megatron.core.tensor_parallel.random"):
        a = torch.rand(3)
        with get_cuda_rng_tracker().fork():
            b = torch.rand(4)
        c = torch.rand(3)
        with get_cuda_rng_tracker().fork():
            d = torch.rand(2)
    assert torch.equal(a, torch.rand(3, generator=default))
    assert torch.equal(c, torch.rand(3, generator=default))
    assert torch.equal(b, torch.rand(4, generator=tp_stream))
    assert torch.equal(d, torch.rand(2, generator=tp_stream))
    assert caplog.records == []  # upstream's "CPU RNG state changed within GPU RNG context" is filtered


def test_rng_tracker_states_round_trip(parallel_state_1):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    from dvr1.parallel.setup import seed_everything

    seed_everything(7)
    tracker = get_cuda_rng_tracker()
    saved = {k: v.clone() for k, v in tracker.get_states().items()}
    with tracker.fork():
        first = torch.rand(5)
    tracker.set_states({k: v.clone() for k, v in saved.items()})
    with tracker.fork():
        again = torch.rand(5)
    assert torch.equal(first, again)


def test_activation_checkpoint_replays_dropout_mask(parallel_state_1):
    """tensor_parallel.checkpoint saves/restores the CPU + tracker RNG states (random.py _get/_set_all_rng_states)."""
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    from dvr1.parallel.setup import seed_everything

    w = torch.randn(8, 8)

    def block(x):
        with get_cuda_rng_tracker().fork():
            x = torch.nn.functional.dropout(x, p=0.5, training=True)
        return torch.nn.functional.dropout(x @ w, p=0.5, training=True)

    grads = []
    for recompute in (False, True):
        seed_everything(3)
        x = torch.randn(4, 8, requires_grad=True)
        y = tensor_parallel.checkpoint(block, False, x) if recompute else block(x)
        (y.square().sum()).backward()
        grads.append((y.detach(), x.grad))
    assert torch.equal(grads[0][0], grads[1][0])
    assert torch.equal(grads[0][1], grads[1][1])


def test_cudagraph_safe_rng_is_refused():
    from megatron_patches.rng_tracker import _cpu_get_rng_state

    with pytest.raises(RuntimeError, match="megatron_patches.rng_tracker: use_cudagraphable_rng needs CUDA"):
        _cpu_get_rng_state(graph_safe=True)


# ---- current device, causal mask, schedules, KV cache ----------------------------------------------------------


def test_global_memory_buffer_and_rope_on_cpu(parallel_state_1):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding
    from megatron.core.utils import GlobalMemoryBuffer

    buf = GlobalMemoryBuffer().get_tensor((2, 3), torch.float32, "probe")
    assert buf.shape == (2, 3) and buf.device.type == "cpu"
    rope = RotaryEmbedding(kv_channels=8, rotary_percent=1.0)
    emb = rope(6)  # [seq, 1, 1, dim]
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
    freqs = torch.outer(torch.arange(6, dtype=torch.float32), inv_freq)
    assert emb.device.type == "cpu"
    torch.testing.assert_close(emb[:, 0, 0], torch.cat([freqs, freqs], -1))


def test_default_causal_mask(parallel_state_1):
    from megatron.core.transformer.utils import get_default_causal_mask

    mask = get_default_causal_mask(4)
    assert mask.device.type == "cpu"
    assert torch.equal(mask, torch.ones(4, 4).triu(1).bool())


def test_gpt_without_mask_equals_explicit_causal_mask(tiny_gpt):
    model = tiny_gpt()
    tokens, _, pos = batch()
    s = tokens.shape[1]
    explicit = torch.ones(s, s, dtype=torch.bool).triu(1).view(1, 1, s, s)  # True = masked out
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, pos, None), model(tokens, pos, explicit), rtol=0, atol=0)


def test_pp1_schedule_equals_direct_forward_backward(tiny_gpt):
    from megatron.core.pipeline_parallel import get_forward_backward_func

    tokens, labels, pos = batch(b=4)
    direct, sched = tiny_gpt(), tiny_gpt()
    loss = direct(tokens, pos, None, labels=labels).mean()
    loss.backward()

    def forward_step(data_iterator, model):
        tok, lab = next(data_iterator)
        out = model(tok, pos[: tok.shape[0]], None, labels=lab)
        return out, lambda o: (o.mean(), {"loss": o.mean().detach().clone()})

    micro = [(tokens[i : i + 2], labels[i : i + 2]) for i in (0, 2)]
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=sched, num_microbatches=2,
        seq_length=tokens.shape[1], micro_batch_size=2, forward_only=False,
    )  # fmt: skip
    torch.testing.assert_close(sum(x["loss"] for x in losses) / 2, loss.detach(), rtol=1e-6, atol=0)
    for (name, p), q in zip(direct.named_parameters(), sched.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("materialize_last_only", [True, False])
def test_static_kv_cache_decoding_equals_full_forward(tiny_gpt, materialize_last_only):
    """GPTModel + StaticInferenceContext (transformer/attention.py KV cache on CPU), RoPE and GQA."""
    from megatron.core.inference.contexts import StaticInferenceContext

    model = tiny_gpt(num_query_groups=2).eval()
    tokens, _, pos = batch(b=2, s=10)
    prompt = 4
    with torch.no_grad():
        full = model(tokens, pos, None)  # [b, s, vocab]
        ctx = StaticInferenceContext(max_batch_size=2, max_sequence_length=16)
        ctx.materialize_only_last_token_logits = materialize_last_only
        prefill = model(tokens[:, :prompt], pos[:, :prompt], None, inference_context=ctx, runtime_gather_output=True)
        ctx.increment_sequence_len_offset(prompt)
        steps = []
        for t in range(prompt, tokens.shape[1]):
            steps.append(model(tokens[:, t : t + 1], pos[:, t : t + 1], None, inference_context=ctx,
                               runtime_gather_output=True))  # fmt: skip
            ctx.increment_sequence_len_offset(1)
    assert ctx.key_value_memory_dict[1][0].device.type == "cpu"
    want_prefill = full[:, prompt - 1 : prompt] if materialize_last_only else full[:, :prompt]
    torch.testing.assert_close(prefill, want_prefill, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(steps, 1), full[:, prompt:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("normalization", ["RMSNorm", "LayerNorm"])
def test_sequence_parallel_norm_builds_marked_local_norm(parallel_state_1, normalization):
    """Upstream asserts under SP (torch_norm.py:32); patched, the same torch norm is built, its parameters carry the
    mark finalize_model_grads.py:354 all-reduces by, and a sequence shard normalises exactly as the whole sequence."""
    import copy

    from megatron.core.transformer import TransformerConfig
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    from megatron_patches import sequence_parallel_norm

    plain_cfg = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2, normalization=normalization)
    sp_cfg = copy.copy(plain_cfg)
    sp_cfg.sequence_parallel = True  # a TP=1 config cannot be built with SP (model_parallel_config.py:409)
    with pytest.raises(AssertionError, match="sequence parallel not supported by torch LayerNorm"):
        WrappedTorchNorm.__new__.__wrapped__(WrappedTorchNorm, sp_cfg, 16, eps=1e-6)  # the upstream body
    sequence_parallel_norm.apply()  # idempotent (apply() above already installed it)
    plain, sp = WrappedTorchNorm(plain_cfg, 16, eps=1e-6), WrappedTorchNorm(sp_cfg, 16, eps=1e-6)
    want = torch.nn.RMSNorm if normalization == "RMSNorm" else torch.nn.LayerNorm
    assert type(plain) is want and type(sp) is want and sp.eps == plain.eps == 1e-6
    assert sp_cfg.sequence_parallel is True  # the caller's config is not changed
    marked = [n for n, p in sp.named_parameters() if getattr(p, "sequence_parallel", False)]
    assert marked == [n for n, _ in sp.named_parameters()] and marked
    assert not any(hasattr(p, "sequence_parallel") for p in plain.parameters())
    x = torch.randn(6, 2, 16, generator=torch.Generator().manual_seed(0))  # [s, b, h]
    sp.load_state_dict(plain.state_dict())
    torch.testing.assert_close(torch.cat([sp(x[:3]), sp(x[3:])]), plain(x), rtol=0, atol=0)


# ---- Megatron DDP + optimizer (dvr1.train.optim) ---------------------------------------------------------------


def test_clip_grad_by_total_norm_matches_torch():
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.zeros(5, 3)), torch.nn.Parameter(torch.zeros(4))]
    ref = [torch.nn.Parameter(torch.zeros_like(p)) for p in ps]
    for p, r in zip(ps, ref):
        p.grad = torch.randn(p.shape, generator=g)
        r.grad = p.grad.clone()
    total = torch.nn.utils.clip_grad_norm_(ref, 0.5).item()
    clip_grad_by_total_norm_fp32_cpu(ps, 0.5, total)
    for p, r in zip(ps, ref):
        torch.testing.assert_close(p.grad, r.grad, rtol=0, atol=0)
    bad = torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))
    bad.grad = torch.zeros(2, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"param.grad has dtype torch.bfloat16, expected \(torch.float32,\)"):
        clip_grad_by_total_norm_fp32_cpu([bad], 1.0, 1.0)


@pytest.mark.parametrize("clip_grad", [0.05, 0.0])
def test_optimizer_step_equals_torch_adamw(tiny_gpt, clip_grad):
    from dvr1.train.optim import build_optimizer

    lr, wd, betas, eps = 1e-2, 0.1, (0.9, 0.95), 1e-8
    model, ref = tiny_gpt(), tiny_gpt()
    tokens, labels, pos = batch()
    chunks, opt = build_optimizer(model, lr=lr, weight_decay=wd, adam_betas=betas, clip_grad=clip_grad, adam_eps=eps)
    for c in chunks:
        c.zero_grad_buffer()
    opt.zero_grad()
    chunks[0](tokens, pos, None, labels=labels).mean().backward()
    for c in chunks:
        c.finish_grad_sync()
    ok, grad_norm, _ = opt.step()

    named = list(ref.named_parameters())
    no_wd = [p for n, p in named if p.dim() == 1 or n.endswith(".bias")]  # megatron optimizer/__init__.py:70
    ref_opt = torch.optim.AdamW(
        [{"params": [p for n, p in named if not (p.dim() == 1 or n.endswith(".bias"))]},
         {"params": no_wd, "weight_decay": 0.0}],
        lr=lr, betas=betas, eps=eps, weight_decay=wd,
    )  # fmt: skip
    ref(tokens, pos, None, labels=labels).mean().backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), clip_grad if clip_grad > 0 else float("inf"))
    ref_opt.step()

    assert ok
    if clip_grad > 0:
        assert grad_norm == pytest.approx(ref_norm.item(), rel=1e-6)
    for (name, p), q in zip(named, model.parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=1e-6, msg=name)
    assert any((q.detach() - p.detach()).abs().max() > 0 for q, p in zip(model.parameters(), tiny_gpt().parameters()))


def test_distributed_optimizer_needs_opt_in_on_cpu(tiny_gpt):
    from dvr1.train.optim import OptimizerSetupError, build_optimizer

    with pytest.raises(OptimizerSetupError) as err:
        build_optimizer(tiny_gpt(), lr=1e-3, use_distributed_optimizer=True)
    assert str(err.value) == (
        "dvr1.train.optim.build_optimizer: bf16=True or use_distributed_optimizer=True on CPU needs the opt-in "
        "Tensor.type alias: set DVR1_MEGATRON_TENSOR_TYPE_ALIAS=1 before init_parallel() or call "
        "megatron_patches.apply(tensor_type_alias=True)"
    )
    with pytest.raises(OptimizerSetupError, match=r"build_optimizer: lr=-1.0 must be >= 0"):
        build_optimizer(tiny_gpt(), lr=-1.0)


def test_lr_scheduler_constant_with_linear_warmup(tiny_gpt):
    from dvr1.train.optim import OptimizerSetupError, build_lr_scheduler, build_optimizer

    _, opt = build_optimizer(tiny_gpt(), lr=1e-3, weight_decay=0.1)
    sched = build_lr_scheduler(opt, lr=1e-3, warmup_steps=4, weight_decay=0.1, init_lr=1e-4)
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in opt.param_groups])
        sched.step(1)
    want = [1e-4 + (1e-3 - 1e-4) * min(k, 4) / 4 for k in range(7)]
    for lrs, w in zip(seen, want):
        assert lrs == pytest.approx([w] * len(lrs))
    assert sorted(g["weight_decay"] for g in opt.param_groups) == [0.0, pytest.approx(0.1)]
    with pytest.raises(OptimizerSetupError, match=r"build_lr_scheduler: init_lr=0.01 > lr=0.001"):
        build_lr_scheduler(opt, lr=1e-3, init_lr=1e-2)


# ---- dvr1.parallel.setup ---------------------------------------------------------------------------------------


def test_parallel_info_single_process(parallel_state_1):
    from megatron.core import parallel_state as ps

    info = parallel_state_1
    assert (info.rank, info.world_size, info.tp_size, info.pp_size, info.dp_size) == (0, 1, 1, 1, 1)
    assert (info.tp_rank, info.pp_rank, info.dp_rank) == (0, 0, 0)
    assert info.device == torch.device("cpu") and info.backend == "gloo"
    assert info.is_first_stage and info.is_last_stage
    assert ps.model_parallel_is_initialized()


def test_init_parallel_rejects_bad_layouts(parallel_state_1):
    from dvr1.parallel.setup import ParallelConfigError, init_parallel, parallel_info

    with pytest.raises(ParallelConfigError) as err:
        init_parallel(tp=2, pp=1)
    assert str(err.value) == "dvr1.parallel.setup: world_size=1 is not divisible by tp*pp=2*1=2"
    with pytest.raises(ParallelConfigError, match=r"tp and pp must be >= 1, got tp=0, pp=1"):
        init_parallel(tp=0)
    assert parallel_info().tp_size == 1  # state untouched by the failed calls
    assert init_parallel(tp=1, pp=1, seed=1234) == parallel_state_1  # same layout: re-seeds, same info


def test_softmax_threads_gradient_independent_of_thread_count(parallel_state_1):
    """The patched softmax equals the unpatched one at 1 thread and gives the same gradient at 3 threads; the plain
    torch.nn.Softmax backward does not (what the patch is for: a run's model must not depend on `threads`)."""
    from megatron_patches.softmax_threads import Softmax

    x0 = torch.randn(32, 350, 350, generator=torch.Generator().manual_seed(0))
    g = torch.randn(32, 350, 350, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()

    def grad(module, n):
        torch.set_num_threads(n)
        try:
            x = x0.clone().requires_grad_()
            module(x).backward(g)
            return x.grad
        finally:
            torch.set_num_threads(threads)

    native1, patched1, patched3 = grad(torch.nn.Softmax(-1), 1), grad(Softmax(-1), 1), grad(Softmax(-1), 3)
    assert torch.equal(native1, patched1) and torch.equal(patched1, patched3)
    assert not torch.equal(native1, grad(torch.nn.Softmax(-1), 3))  # torch 2.13 CPU kernel: differs in the last bit
    from megatron.core.fusions import fused_softmax

    assert fused_softmax.torch.nn.Softmax is Softmax
