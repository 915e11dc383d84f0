"""Build for nnunet-mgcl.

The repository's top level is fixed by the design card (``nnunet_mgcl/``, ``dataset_conversion/``,
``trainers/``). The last two are installed *under* ``nnunet_mgcl.`` so that no top-level package called
``trainers`` or ``dataset_conversion`` lands in a user's site-packages.
"""
from setuptools import setup

setup(
    name="nnunet-mgcl",
    version="0.1.0",
    description=(
        "nnU-Net v2 plugin for label-efficient stroke imaging: dataset converters, multi-grained "
        "contrastive pretraining (MGCL, MMGL) and multi-task lesion segmentation + onset-time "
        "classification"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[
        "nnunet_mgcl",
        "nnunet_mgcl.phantom",
        "nnunet_mgcl.networks",
        "nnunet_mgcl.data",
        "nnunet_mgcl.evaluation",
        "nnunet_mgcl.dataset_conversion",
        "nnunet_mgcl.trainers",
    ],
    package_dir={
        "nnunet_mgcl": "nnunet_mgcl",
        "nnunet_mgcl.dataset_conversion": "dataset_conversion",
        "nnunet_mgcl.trainers": "trainers",
    },
    # the shim folder that nnUNet_extTrainer points at: data, not a package (see nnunet_mgcl/discovery.py)
    package_data={"nnunet_mgcl": ["nnunet_ext/*.py"]},
    install_requires=[
        "nnunetv2==2.8.1",
        "torch>=2.1.2,!=2.9.*",
        "numpy>=1.24",
        "SimpleITK>=2.2.1",
        "nibabel>=5.0",
        "nilearn>=0.10.3",
        "pandas>=2.0",
        "openpyxl>=3.1",
        "connected-components-3d>=3.12",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": ["pytest>=8", "pytorch-metric-learning>=2.5", "setuptools>=70.1"],
    },
    entry_points={"console_scripts": ["nnunet-mgcl=nnunet_mgcl.cli:main"]},
)
