"""`dvr1` command line: `dvr1 <command> [-c CONFIG.yaml] [key=value ...]`.

Commands:
  main       the whole job: data -> tiny checkpoint -> SFT -> eval -> RL -> eval -> plots (resumable)
  data       build the verifiable video-QA dataset at data.root
  data import  convert a public dataset's annotations into dvr1 records (`dvr1 data import --help`)
  make-tiny  make the tiny random-init Qwen2.5-VL checkpoint (tokenizer trained on the dataset)
  sft        SFT cold start from model.path (or the tiny checkpoint)
  train      RL (algo.name=reg_grpo|grpo, da_aug.enabled=...) from --init (default <run_dir>/sft/hf)
  eval       greedy eval of --model: video QA on eval.split (--task qa), or dense captioning + grounding on the
             VidChain set (--task dvc: METEOR/CIDEr@tIoU, SODA_c, mIoU, R1; writes <run_dir>/eval_vidchain_<name>.json),
             or a benchmark's own metrics on imported sets (--benchmark NAME|all --data DIR; the paper's table)
  plot       PNG plots from a run directory's metrics
  convert    HF <-> megatron-core checkpoint conversion at any TP/PP (`dvr1 convert --help`)
  ablate     run a grid of RL ablations x seeds and write the report (`dvr1 ablate --help`)
  vidchain   VidChain dense captioning: CoTasks SFT -> eval -> M-DPO -> eval (`dvr1 vidchain --help`)

Examples:
  dvr1 main -c examples/tiny_cpu.yaml
  dvr1 train -c examples/tiny_cpu.yaml algo.name=grpo da_aug.enabled=false run_dir=runs/grpo
  dvr1 eval --task dvc --model runs/vidchain_tiny/vidchain_sft/hf -c examples/vidchain_tiny.yaml --name sft
  dvr1 eval --benchmark all --data data/benchmarks --model runs/paper_3b/rl/hf -c examples/paper_3b.yaml --name rl
  torchrun --nproc-per-node 2 -m dvr1.cli main -c examples/tiny_cpu_tp2.yaml
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvr1", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("main", "data", "make-tiny", "sft", "train", "eval", "plot"):
        s = sub.add_parser(name)
        s.add_argument("-c", "--config", default=None, help="YAML config (defaults: dvr1/config.py)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.steps=20")
        if name == "train":
            s.add_argument("--init", default=None, help="HF checkpoint to start from (default <run_dir>/sft/hf)")
        if name == "eval":
            s.add_argument("--model", required=True, help="HF checkpoint directory to evaluate")
            s.add_argument("--task", choices=("qa", "dvc"), default="qa",
                           help="qa: video QA/grounding (dvr1.train.evaluate); dvc: VidChain dense captioning")
            s.add_argument("--name", default="model",
                           help="writes <run_dir>/eval_<name>.json (qa) or <run_dir>/eval_vidchain_<name>.json (dvc)")
            s.add_argument("--split", default=None, help="default: eval.split (qa), vidchain.eval_split (dvc), the "
                                                         "manifest's split (--benchmark)")
            s.add_argument("--benchmark", default=None,
                           help="a benchmark's metric set on the imported set(s) at --data (seed-bench-r1, nextgqa, "
                                "longvideobench, mvbench, video-mme, tgif-qa, another name: accuracy per task; all: "
                                "every set under --data, one table); writes <run_dir>/eval_<benchmark>_<name>.json")
            s.add_argument("--data", default=None, help="--benchmark: a `dvr1 data import` output directory, or a "
                                                        "directory of them")
    return p


def main(argv=None) -> int:
    import warnings

    # megatron-core warns at import that TransformerEngine/apex are absent; on CPU that is expected.
    warnings.filterwarnings("ignore", message=".*(Apex|apex|Transformer Engine|TransformerEngine).*")
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["data", "import"]:  # its own parser; `dvr1 data` alone builds the synthetic set
        from dvr1.importing import main as import_main

        return import_main(argv[2:])
    if argv and argv[0] in ("convert", "ablate", "vidchain"):  # commands with their own argument parsers
        if argv[0] == "convert":
            from dvr1.models.convert import main as convert_main

            return convert_main(argv[1:])
        if argv[0] == "vidchain":
            from dvr1.vidchain.job import main as vidchain_main

            return vidchain_main(argv[1:])
        from dvr1.ablate import main as ablate_main

        return ablate_main(argv[1:])
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except _user_errors() as e:  # expected user errors: one clear line, no traceback
        print(f"dvr1 {args.command}: {_one_line(e)}", file=sys.stderr, flush=True)
        return 2


def _user_errors() -> tuple:
    """Exceptions that mean "the user's config or data is wrong" (exit 2), not a bug: bad config values
    (ConfigError, OmegaConf's key/type errors), unusable data (dvr1.data.schema.DataError: bad records in strict mode,
    no usable records, a data.root dvr1 must not write to), missing files."""
    from omegaconf.errors import OmegaConfBaseException

    from dvr1.config import ConfigError
    from dvr1.data.schema import DataError

    return ConfigError, DataError, OmegaConfBaseException, FileNotFoundError


def _one_line(e: BaseException) -> str:
    """The error's first line (OmegaConf appends `full_key: ...` detail lines), at most 2000 characters."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= 2000 else text[:2000] + " ..."


def _run(args) -> int:
    from dvr1.config import load_config

    if args.config and not os.path.isfile(args.config):
        raise FileNotFoundError(f"config file not found: {args.config}")
    cfg = load_config(args.config, args.overrides)
    from dvr1.train import job

    job.setup_logging(cfg.run_dir)
    if args.command == "main":
        job.run_main(cfg)
    elif args.command == "data":
        print(job.ensure_data(cfg))
    elif args.command == "make-tiny":
        job.set_threads(cfg)
        job.ensure_data(cfg)
        print(job.ensure_model(cfg))
    elif args.command == "plot":
        from dvr1.train.metrics import plot_run

        print("\n".join(plot_run(cfg.run_dir)))
    else:
        pinfo = job.init(cfg)
        if args.command == "train" or args.command == "eval" and args.task == "qa" and not args.benchmark:
            job.check_data_root(cfg)  # read-only: refuses a data.root that is neither dvr1's nor a dataset
        if args.command == "sft":
            job.ensure_data(cfg)
            print(job.run_sft(cfg, pinfo, job.ensure_model(cfg)))
        elif args.command == "train":
            init_hf = args.init or os.path.join(os.path.abspath(cfg.run_dir), "sft", "hf")
            if not os.path.exists(os.path.join(init_hf, "config.json")):
                print(f"dvr1 train: {init_hf} is not a HF checkpoint (run `dvr1 sft` first or pass --init)",
                      file=sys.stderr)
                return 2
            print(job.run_rl(cfg, pinfo, init_hf))
        elif args.command == "eval" and not os.path.isfile(os.path.join(args.model, "config.json")):
            raise FileNotFoundError(f"--model {args.model}: not a Hugging Face checkpoint directory (no config.json)")
        elif args.command == "eval" and args.benchmark:
            if not args.data:
                raise FileNotFoundError("--benchmark needs --data DIR (a `dvr1 data import` output directory)")
            _, table = job.run_benchmark(cfg, pinfo, os.path.abspath(args.model), args.benchmark, args.data,
                                         args.name, args.split)
            if pinfo.rank == 0:
                print(table, flush=True)
        elif args.command == "eval" and args.task == "dvc":
            from dvr1.vidchain.job import format_results, run_eval

            res = run_eval(cfg, pinfo, os.path.abspath(args.model), args.name, args.split)
            if pinfo.rank == 0:
                print(format_results({args.name: res}), flush=True)
        elif args.command == "eval":
            job.run_eval(cfg, pinfo, os.path.abspath(args.model), args.name, args.split)
    return 0


if __name__ == "__main__":
    sys.exit(main())
