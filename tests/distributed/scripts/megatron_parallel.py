"""TP=2, PP=2 and DP=2 of a tiny megatron-core GPTModel against a plain single-layout reference (torchrun, 2 ranks).

Run: ``torchrun --nproc-per-node 2 tests/distributed/scripts/megatron_parallel.py OUT_DIR`` (gloo, CPU).

1. Reference (every rank, redundantly): init_parallel(tp=1, pp=1); a plain GPTModel (2 layers, hidden 64, vocab 128,
   fp32, no dropout) on the whole batch [4, 16]: loss (mean token cross-entropy), ``param.grad``, and one step of
   ``torch.optim.AdamW`` + ``clip_grad_norm_`` with megatron's weight-decay grouping. Its initial weights are saved
   with ``dvr1.train.checkpoint.save_checkpoint`` (megatron dist_checkpointing).
2. For each layout (TP=2; PP=2 with tied embeddings; DP=2; DP=2 with the DistributedOptimizer): init_parallel, build
   the stage / shard model, load the TP=1 checkpoint (resharded by dist_checkpointing), wrap with
   ``dvr1.train.optim.build_optimizer`` and run ``get_forward_backward_func()`` over micro-batches of 1 (DP ranks
   take disjoint halves), then one optimizer step. Grads are read from DDP's ``main_grad`` after
   ``finalize_model_grads``, TP shards are all-gathered along ``partition_dim``, PP stage layer names are shifted to
   global layer numbers.
3. bf16 (DP=2): Float16Module + the bf16 optimizer, loose comparison (loss, grad norm) with the fp32 reference.
4. DistributedOptimizer resume: save after step 1 (``dp_reshardable``), step 2; a fresh model + optimizer loads and
   steps: parameters must match bit for bit.

Writes OUT_DIR/results.json (rank 0) with, per case: loss_rel, grad_rel (max over params of ||g - g_ref|| / ||g_ref||),
update_rel (same for the parameter update of the optimizer step), grad_norm_rel, init_rel (weights after the load),
names (global names compared, union over ranks) and ref_names.
"""

import json
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist

SEQ, BATCH, VOCAB = 16, 4, 128
LR, WD, BETAS, EPS, CLIP = 1e-3, 0.1, (0.9, 0.95), 1e-8, 0.05


def build_model(tp: int, pp: int, tied: bool, **overrides):
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(
        num_layers=2, hidden_size=64, num_attention_heads=4, tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp, pipeline_dtype=torch.float32, params_dtype=torch.float32,
        use_cpu_initialization=True, hidden_dropout=0.0, attention_dropout=0.0, **overrides,
    )  # fmt: skip
    return GPTModel(
        config, get_gpt_layer_local_spec(), vocab_size=VOCAB, max_sequence_length=SEQ,
        position_embedding_type="rope", share_embeddings_and_output_weights=tied,
        pre_process=ps.is_pipeline_first_stage(), post_process=ps.is_pipeline_last_stage(),
    )  # fmt: skip


def batch():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def positions(tokens):
    return torch.arange(tokens.shape[1]).unsqueeze(0).expand_as(tokens)


def no_decay(name: str, p: torch.Tensor) -> bool:
    """megatron-core optimizer/__init__.py:70: no weight decay for biases and 1-D params."""
    return p.dim() == 1 or name.endswith(".bias")


def reference(tied: bool, run_dir: Path):
    """Plain single-layout run; returns (loss, grads, updates, grad_norm, init) with global names."""
    from dvr1.parallel.setup import destroy_parallel, init_parallel
    from dvr1.train.checkpoint import save_checkpoint

    init_parallel(tp=1, pp=1, seed=1234)
    model = build_model(1, 1, tied)
    save_checkpoint(run_dir, 0, [model])
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    tokens, labels = batch()
    loss = model(tokens, positions(tokens), None, labels=labels).float().mean()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    named = list(model.named_parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for n, p in named if not no_decay(n, p)], "weight_decay": WD},
            {"params": [p for n, p in named if no_decay(n, p)], "weight_decay": 0.0},
        ],
        lr=LR, betas=BETAS, eps=EPS,
    )  # fmt: skip
    grad_norm = torch.nn.utils.clip_grad_norm_([p for _, p in named], CLIP).item()
    opt.step()
    updates = {n: p.detach() - init[n] for n, p in model.named_parameters()}
    destroy_parallel(keep_process_group=True)
    return loss.item(), grads, updates, grad_norm, init


def global_name(name: str, layer_offset: int) -> str:
    return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + layer_offset}.", name)


def full(t: torch.Tensor, p: torch.nn.Parameter) -> torch.Tensor:
    """All-gather a TP shard along its partition_dim (megatron's tensor_model_parallel attribute)."""
    from megatron.core import parallel_state as ps

    if not getattr(p, "tensor_model_parallel", False) or ps.get_tensor_model_parallel_world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(ps.get_tensor_model_parallel_world_size())]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=p.partition_dim)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    den = b.norm().item()
    return (a - b).norm().item() / den if den > 0 else (a - b).norm().item()


def forward_step(data_iterator, model):
    tokens, labels = next(data_iterator)
    out = model(tokens, positions(tokens), None, labels=labels)

    def loss_func(per_token_loss):
        loss = per_token_loss.float().mean()
        return loss, {"lm loss": loss.detach().clone()}  # the schedule divides `loss` in place

    return out, loss_func


def forward_backward(chunks, optimizer, tokens, labels):
    """This rank's part of the global batch through get_forward_backward_func (micro-batch 1); returns the mean
    loss over its micro-batches (None off the last stage). Grads end in DDP's main_grad (reduced)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for c in chunks:
        c.zero_grad_buffer()
    optimizer.zero_grad()
    micro = [(tokens[i : i + 1], labels[i : i + 1]) for i in range(tokens.shape[0])]
    losses = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iter(micro), model=chunks[0], num_microbatches=len(micro),
        seq_length=SEQ, micro_batch_size=1, forward_only=False,
    )  # fmt: skip
    return sum(l["lm loss"] for l in losses) / len(losses) if losses else None


def train_step(chunks, optimizer, tokens, labels):
    """forward_backward + one optimizer step."""
    forward_backward(chunks, optimizer, tokens, labels)
    optimizer.step()


def run_layout(tp, pp, tied, run_dir, ref, distributed_optimizer=False):
    from megatron.core import parallel_state as ps

    import megatron_patches
    from dvr1.parallel.setup import destroy_parallel, init_parallel
    from dvr1.train.checkpoint import load_checkpoint
    from dvr1.train.optim import build_optimizer

    ref_loss, ref_grads, ref_updates, ref_norm, ref_init = ref
    info = init_parallel(tp=tp, pp=pp, seed=1234)
    if distributed_optimizer:
        megatron_patches.apply(tensor_type_alias=True)
    model = build_model(tp, pp, tied)
    load_checkpoint(run_dir, [model], restore_rng=False)
    offset = info.pp_rank * (2 // pp)
    params = {global_name(n, offset): p for n, p in model.named_parameters()}
    if tied and pp > 1 and info.is_last_stage:  # the last stage's copy of the tied embedding
        params["embedding.word_embeddings.weight"] = params.pop("output_layer.weight")
    before = {n: full(p.detach().clone(), p) for n, p in params.items()}
    chunks, optimizer = build_optimizer(
        model, lr=LR, weight_decay=WD, adam_betas=BETAS, adam_eps=EPS, clip_grad=CLIP,
        use_distributed_optimizer=distributed_optimizer,
    )  # fmt: skip
    tokens, labels = batch()
    per_dp = BATCH // info.dp_size
    rows = slice(info.dp_rank * per_dp, (info.dp_rank + 1) * per_dp)
    loss = forward_backward(chunks, optimizer, tokens[rows], labels[rows])
    result = {"init_rel": 0.0, "grad_rel": 0.0, "update_rel": 0.0, "loss_rel": 0.0}
    if not distributed_optimizer:  # DistOpt reduce-scatters: main_grad is only valid on this rank's shard
        for name, p in params.items():
            result["grad_rel"] = max(result["grad_rel"], rel(full(p.main_grad, p), ref_grads[name]))
    _, grad_norm, _ = optimizer.step()  # clips main_grad in place
    result["grad_norm_rel"] = abs(grad_norm - ref_norm) / ref_norm
    if loss is not None:
        loss_t = loss.clone()
        dist.all_reduce(loss_t, group=ps.get_data_parallel_group())
        result["loss_rel"] = abs(loss_t.item() / info.dp_size - ref_loss) / abs(ref_loss)
    for name, p in params.items():
        result["init_rel"] = max(result["init_rel"], rel(before[name], ref_init[name]))
        result["update_rel"] = max(result["update_rel"], rel(full(p.detach(), p) - before[name], ref_updates[name]))
    for key in ("init_rel", "grad_rel", "update_rel", "loss_rel", "grad_norm_rel"):
        t = torch.tensor(result[key], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        result[key] = t.item()
    names = [None] * dist.get_world_size()
    dist.all_gather_object(names, sorted(params))
    result["names"] = sorted(set().union(*names))
    result["ref_names"] = sorted(ref_grads)
    destroy_parallel(keep_process_group=True)
    return result


def distopt_resume(run_dir: Path):
    """DP=2 DistributedOptimizer (dp_reshardable): save after step 1, step 2; reload into a fresh model, step 2."""
    import megatron_patches
    from dvr1.parallel.setup import destroy_parallel, init_parallel
    from dvr1.train.checkpoint import load_checkpoint, save_checkpoint
    from dvr1.train.optim import build_lr_scheduler, build_optimizer

    info = init_parallel(tp=1, pp=1, seed=1234)
    megatron_patches.apply(tensor_type_alias=True)
    tokens, labels = batch()
    rows = slice(info.dp_rank * 2, info.dp_rank * 2 + 2)

    def fresh():
        model = build_model(1, 1, False)
        load_checkpoint(run_dir, [model], restore_rng=False, step=0)
        chunks, opt = build_optimizer(model, lr=LR, weight_decay=WD, adam_betas=BETAS, clip_grad=CLIP,
                                      use_distributed_optimizer=True)
        return model, chunks, opt, build_lr_scheduler(opt, LR, warmup_steps=2, weight_decay=WD, init_lr=LR / 4)

    model, chunks, opt, sched = fresh()
    train_step(chunks, opt, tokens[rows], labels[rows])
    sched.step(1)
    save_checkpoint(run_dir, 1, chunks, opt, sched, {"position": 1})
    train_step(chunks, opt, tokens[rows].flip(0), labels[rows].flip(0))
    want = {n: p.detach().clone() for n, p in model.named_parameters()}

    model2, chunks2, opt2, sched2 = fresh()
    extra = load_checkpoint(run_dir, chunks2, opt2, sched2)
    train_step(chunks2, opt2, tokens[rows].flip(0), labels[rows].flip(0))
    diff = max((p.detach() - want[n]).abs().max().item() for n, p in model2.named_parameters())
    t = torch.tensor(diff, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    destroy_parallel(keep_process_group=True)
    return {"max_abs_diff": t.item(), "extra": extra, "lr_after": sched2.get_lr(opt2.param_groups[0])}


def bf16_smoke(run_dir: Path, ref):
    """DP=2, bf16 params (Float16Module) + Float16OptimizerWithFloat16Params (needs the opt-in Tensor.type alias).
    bf16 rounding allows only a loose comparison with the fp32 reference: loss and grad norm within a few %."""
    from megatron.core import parallel_state as ps
    from megatron.core.transformer.module import Float16Module

    import megatron_patches
    from dvr1.parallel.setup import destroy_parallel, init_parallel
    from dvr1.train.checkpoint import load_checkpoint
    from dvr1.train.optim import build_optimizer

    ref_loss, _, _, ref_norm, _ = ref
    info = init_parallel(tp=1, pp=1, seed=1234)
    megatron_patches.apply(tensor_type_alias=True)
    model = build_model(1, 1, False, bf16=True)
    load_checkpoint(run_dir, [model], restore_rng=False, step=0)
    model = Float16Module(model.config, model)  # casts the fp32 weights to bf16
    chunks, optimizer = build_optimizer(model, lr=LR, weight_decay=WD, adam_betas=BETAS, clip_grad=CLIP, bf16=True)
    tokens, labels = batch()
    rows = slice(info.dp_rank * 2, info.dp_rank * 2 + 2)
    loss = forward_backward(chunks, optimizer, tokens[rows], labels[rows]).clone()
    dist.all_reduce(loss, group=ps.get_data_parallel_group())
    ok, grad_norm, _ = optimizer.step()
    dtypes = sorted({str(p.dtype) for p in model.parameters()})
    destroy_parallel(keep_process_group=True)
    return {"ok": bool(ok), "loss_rel": abs(loss.item() / 2 - ref_loss) / ref_loss,
            "grad_norm_rel": abs(grad_norm - ref_norm) / ref_norm, "param_dtypes": dtypes}


def main(out_dir: Path):
    from dvr1.parallel.setup import destroy_parallel

    run_dir = out_dir / "ckpt_untied"
    tied_dir = out_dir / "ckpt_tied"
    ref = reference(False, run_dir)
    ref_tied = reference(True, tied_dir)
    results = {
        "tp2": run_layout(2, 1, False, run_dir, ref),
        "pp2_tied": run_layout(1, 2, True, tied_dir, ref_tied),
        "dp2": run_layout(1, 1, False, run_dir, ref),
        "dp2_distopt": run_layout(1, 1, False, run_dir, ref, distributed_optimizer=True),
        "distopt_resume": distopt_resume(run_dir),
        "dp2_bf16": bf16_smoke(run_dir, ref),
    }
    if dist.get_rank() == 0:
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    destroy_parallel()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
