"""Checkpoints across layouts at TP=2 x PP=2 (torchrun, 4 ranks, gloo).

Run: ``torchrun --nproc-per-node 4 tests/distributed/scripts/convert_tp_pp.py OUT_DIR`` where OUT_DIR/inputs.json
maps each variant to {"hf": HF dir, "conv22": HF->megatron converted for TP=2/PP=2 (one process),
"run11": a dvr1.train.checkpoint saved by megatron at TP=1/PP=1, "run22": where to save at TP=2/PP=2}.

Per variant, every rank builds its TP=2/PP=2 stage of the policy three times:
  ref     load_hf_weights (HF tensors sharded by dvr1.models.hf_mapping at this rank's TP/PP: the direct path)
  conv    dvr1.models.convert.load_megatron_checkpoint(conv22)       (dist_checkpointing.load)
  from11  load_megatron_checkpoint(run11, hf_dir=hf)                 (resharded TP=1/PP=1 -> TP=2/PP=2)
counts the parameters of conv / from11 that are not bit-identical to ref (summed over ranks), runs the video + text
forward of each (stage 0 sends its hidden states [seq, 1, hidden] to stage 1; logits gathered over TP), and saves
ref with dvr1.train.checkpoint.save_checkpoint to run22 (megatron's own TP=2/PP=2 save).

Writes OUT_DIR/results.json (rank 0: compared / mismatched parameter counts) and OUT_DIR/{variant}_logits.pt
(last stage, TP rank 0: {"ref", "conv", "from11"} logits [1, seq, vocab]).
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def pp_forward(policy, x, info):
    """Logits [1, seq, vocab] on the last stage (None elsewhere): stage 0 -> send hidden -> stage 1."""
    from megatron.core import parallel_state as ps

    with torch.no_grad():
        if info.is_first_stage:
            h = policy(x["ids"], x["pos"], pixel_values_videos=x["pv"], video_grid_thw=x["grid"])
            dist.send(h.contiguous(), ps.get_pipeline_model_parallel_next_rank())
            return None
        h = torch.empty(x["ids"].shape[1], 1, policy.config.hidden_size)
        dist.recv(h, ps.get_pipeline_model_parallel_prev_rank())
        policy.set_input_tensor(h)
        return policy(x["ids"], x["pos"], runtime_gather_output=True)


def mismatches(a, b) -> tuple[int, int]:
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k, v in sb.items() if isinstance(v, torch.Tensor)]
    if set(keys) != {k for k, v in sa.items() if isinstance(v, torch.Tensor)}:
        raise RuntimeError(f"state dict keys differ: {set(sa) ^ set(sb)}")
    return len(keys), sum(not torch.equal(sa[k], sb[k]) for k in keys)


if __name__ == "__main__":
    from dvr1.models.convert import load_megatron_checkpoint
    from dvr1.models.qwen2_5_vl import Qwen25VLPolicy, load_hf_config, load_hf_weights
    from dvr1.parallel.setup import init_parallel
    from dvr1.train.checkpoint import save_checkpoint
    from tests.distributed.scripts.convert_common import model_inputs

    out = Path(sys.argv[1])
    spec = json.loads((out / "inputs.json").read_text())
    info = init_parallel(tp=2, pp=2, seed=0)
    results = {}
    for name, d in spec.items():
        cfg = load_hf_config(d["hf"])
        per_stage = cfg.text_config.num_hidden_layers // 2

        def build():
            return Qwen25VLPolicy(cfg, tp=2, pp=2, pre_process=info.is_first_stage,
                                  post_process=info.is_last_stage).eval()

        ref = build()
        load_hf_weights(ref, d["hf"], info.tp_rank, 2, layer_offset=info.pp_rank * per_stage)
        conv = build()
        load_megatron_checkpoint(conv, d["conv22"])
        from11 = build()
        load_megatron_checkpoint(from11, d["run11"], hf_dir=d["hf"])
        counts = torch.tensor([*mismatches(conv, ref), *mismatches(from11, ref)])
        dist.all_reduce(counts)
        results[name] = dict(zip(["conv_compared", "conv_mismatched", "from11_compared", "from11_mismatched"],
                                 counts.tolist()))
        x = model_inputs(cfg)
        logits = {k: pp_forward(m, x, info) for k, m in (("ref", ref), ("conv", conv), ("from11", from11))}
        if info.is_last_stage and info.tp_rank == 0:
            torch.save(logits, out / f"{name}_logits.pt")
        save_checkpoint(d["run22"], 0, [ref])
    if info.rank == 0:
        (out / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
