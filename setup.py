"""ppd: point prompts for SAM2, made better by reinforcement learning."""

from setuptools import setup

setup(
    name="ppd",
    version="0.1.0",
    description="Point Prompt Defender: RL agents that attack and defend SAM2 point prompts",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # graphs/, envs/ and agents/ live at the top of the repository but install inside
    # the ppd namespace, so nothing with a generic name lands in site-packages.
    packages=["ppd", "ppd.data", "ppd.bench", "ppd.ruac", "ppd.graphs", "ppd.envs", "ppd.agents"],
    package_dir={"ppd": "ppd", "ppd.graphs": "graphs", "ppd.envs": "envs", "ppd.agents": "agents"},
    package_data={"ppd": ["assets/*.pt", "assets/*.md", "assets/defender/*"]},
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
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["ppd=ppd.cli:main"]},
)
