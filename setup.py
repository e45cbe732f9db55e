"""ppd: point prompts for SAM2, made better by reinforcement learning."""

from setuptools import find_namespace_packages, setup

# graphs/, envs/ and agents/ live at the top of the repository but install inside the ppd
# namespace, so nothing with a generic name lands in site-packages. Every folder under
# these roots is a package (ppd.assets and ppd.assets.defender hold data files only).
ROOTS = {"ppd": "ppd", "ppd.graphs": "graphs", "ppd.envs": "envs", "ppd.agents": "agents"}
PACKAGES = [
    pkg
    for name, folder in ROOTS.items()
    for pkg in [name, *(f"{name}.{sub}" for sub in find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"]))]
]

setup(
    name="ppd",
    version="0.1.0",
    description="Point Prompt Defender: RL agents that attack and defend SAM2 point prompts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: OS Independent",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=ROOTS,
    # the bundled model, the bundled defender run and their model cards
    package_data={"ppd.assets": ["*.pt", "*.md"], "ppd.assets.defender": ["*"]},
    include_package_data=True,
    install_requires=[
        # torch stays loose so GPU users keep their CUDA build (constraints.txt pins the
        # CPU build for installs on the development machines).
        "torch>=2.5.1",
        "sam2>=1.1.0",
        "gymnasium>=1.0",
        "stable-baselines3>=2.4",
        "torch-geometric>=2.5",
        "networkx>=3.0",
        "numpy>=1.24",
        "scipy>=1.10",  # distance transforms (clicks), image filters (scenes)
        "pillow>=9.0",  # PNG/JPEG reading and writing
        "pycocotools>=2.0.7",  # COCO polygons and RLE
        "pyyaml>=6.0",
        "tqdm>=4.60",  # CLI progress bars
        "tensorboard>=2.12",  # training scalars
        "opencv-python-headless>=4.8",  # exact distance transforms of the click protocol
        "pandas>=2.0",  # benchmark results tables
        "pyarrow>=14",  # results.parquet
        "matplotlib>=3.7",  # benchmark report figures
    ],
    extras_require={
        "ray": ["ray>=2.9"],  # ppd bench --ray: work units as Ray tasks, locally or on a cluster
        "test": ["pytest>=7", "ray>=2.9"],  # the Ray runner is tested too
    },
    entry_points={"console_scripts": ["ppd=ppd.cli:main"]},
)
