"""Packaging for sktransfer."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "sktransfer" / "_version.py").read_text(), re.M
).group(1)

SCALE_OUT = {
    # joblib's dask backend: grid searches on a dask.distributed cluster
    "dask": ["dask[distributed]>=2023.4"],
    # joblib's Ray backend (ray.util.joblib)
    "ray": ["ray>=2.9"],
    # skorch's AccelerateMixin: one fit on many GPUs, mixed precision
    "accelerate": ["accelerate>=0.28"],
}

MODEL_SOURCES = {
    # model="timm:<name>": timm image models (group_matcher, forward_head(pre_logits=True))
    "timm": ["timm>=1.0"],
    # model="hf:<directory or hub id>": transformers text encoders and their tokenizers
    # (>= 5: encoder layers take the mask from transformers.masking_utils)
    "hf": ["transformers>=5.0", "tokenizers>=0.22"],
}

ADAPTERS = {
    # adapter="lora": LoRA adapters through peft (LoraModel, merge_and_unload)
    "lora": ["peft>=0.13"],
}

EXTRAS = {
    "plot": ["matplotlib>=3.6"],
    **SCALE_OUT,
    **MODEL_SOURCES,
    **ADAPTERS,
    "distributed": sorted({req for reqs in SCALE_OUT.values() for req in reqs}),
    "test": [
        "pytest>=7",
        "hypothesis>=6",
        "matplotlib>=3.6",
        # the scale-out tests start real local dask and Ray clusters and torchrun
        *(req for reqs in SCALE_OUT.values() for req in reqs),
        # tiny timm models and Hugging Face encoders built in the tests (no download)
        *(req for reqs in MODEL_SOURCES.values() for req in reqs),
        # adapter="lora" trains and merges real peft adapters in the tests
        *ADAPTERS["lora"],
    ],
    "docs": [
        # the gallery runs examples/plot_text_column.py (a tiny local encoder)
        *MODEL_SOURCES["hf"],
        "sphinx>=7",
        "numpydoc>=1.6",
        "sphinx-gallery>=0.15",
        "pydata-sphinx-theme>=0.15",
        "matplotlib>=3.6",
    ],
}

setup(
    name="sktransfer",
    version=VERSION,
    description="Transfer learning as a first-class citizen of scikit-learn",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    packages=find_packages(include=["sktransfer", "sktransfer.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "scikit-learn>=1.6",
        "threadpoolctl>=3.1",  # scikit-learn's own dependency; the probe limits BLAS threads
        "skorch>=1.0",
        "numpy>=1.23",
        "pandas>=1.5",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "pillow>=9",
    ],
    extras_require=EXTRAS,
    classifiers=[
        "Programming Language :: Python :: 3",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
