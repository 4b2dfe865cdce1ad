"""Install the XKD packages (xkd, shards, dali_pipelines, benchmarks) and the `xkd` command.

torch must already be installed (DeepSpeed's build imports it): use ./install.sh, which installs
torch first and then this package with `--no-build-isolation`.
"""
from setuptools import find_packages, setup

# Versions checked together on the 2-core CPU machine, and run once on an NVIDIA H200 with CUDA 13
# (2026-11-28: the 8 GPU tests pass; benchmarks/results/logs_NVIDIA_H200_2026-11-28/gpu_tests.log).
TORCH = ["torch==2.11.0", "torchvision==0.26.0", "torchaudio==2.11.0"]
INSTALL_REQUIRES = TORCH + [
    "nvidia-dali-cuda130==2.4.0",
    "timm==1.0.31",
    "webdataset==1.0.2",
    "deepspeed==0.19.8",
    "numpy==2.4.6",
    "av==18.1.0",
    "soundfile==0.14.0",
    "tqdm==4.70.1",
    "PyYAML==6.0.3",
    "safetensors==0.8.0",
    "psutil==7.2.2",  # memory of a process and its workers (benchmarks, training logs)
    "tensorboard==2.21.0",  # training logs
    "scikit-learn==1.9.1",  # evaluation: the linear SVM, its cross-validation folds, average precision
    "matplotlib==3.11.2",  # the charts of `xkd bench`
]
TEST_REQUIRES = ["pytest==9.0.3", "scikit-video==1.1.11"]

setup(
    name="xkd",
    version="0.1.0",
    description="XKD cross-modal knowledge distillation: shards, DALI pipelines, DeepSpeed pretraining",
    python_requires=">=3.10",
    packages=find_packages(include=["xkd", "xkd.*", "shards", "shards.*", "dali_pipelines", "dali_pipelines.*",
                                    "benchmarks", "benchmarks.*"]),  # benchmarks: behind `xkd bench`
    # presets and DeepSpeed configs; the class lists of `xkd shards create --classes-from`
    package_data={"xkd": ["configs/*.yaml", "configs/finetune/*.yaml", "deepspeed_configs/*.json"],
                  "shards": ["lists/*.txt"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["xkd=xkd.commands:main"]},
)
