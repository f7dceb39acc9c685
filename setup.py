"""beam-gpu-runner: run Apache Beam pipelines on GPUs, Flink-external-resource style."""
from setuptools import setup

setup(
    name="beam-gpu-runner",
    version="0.1.0",
    description=(
        "An Apache Beam runner that gives transforms GPUs through resource hints "
        "and Flink-style external resource drivers"),
    python_requires=">=3.10,<3.13",
    packages=[
        "beam_gpu_runner",
        "beam_gpu_runner.preprocess",
        "beam_gpu_runner.engine",
        "beam_gpu_runner.execution",
        "beam_gpu_runner.workers",
        "beam_gpu_runner.placement",
        "beam_gpu_runner.resources",
        "beam_gpu_runner.jobservice",
        "beam_gpu_runner.ui",
        "beam_gpu_runner.drivers",
        "beam_gpu_runner.transforms",
        "beam_gpu_runner.pipelines",
    ],
    # Top-level folders are fixed by the product card; their import names are
    # not generic (a site-packages entry called `drivers` would clash).
    package_dir={
        "beam_gpu_runner.drivers": "drivers",
        "beam_gpu_runner.transforms": "transforms",
        "beam_gpu_runner.pipelines": "pipelines",
    },
    package_data={
        "beam_gpu_runner.drivers": ["scripts/*.sh", "scripts/*.py"],
        "beam_gpu_runner.transforms": ["data/*", "data/*/*"],
        "beam_gpu_runner.ui": ["assets/*"],
    },
    include_package_data=True,
    install_requires=[
        # We use Beam's fusion phases, Fn API worker handlers and bundle
        # managers, which are internal: keep the range narrow.
        "apache-beam>=2.77.0,<2.78",
        "jax>=0.4.30",
        "numpy>=1.26",
        "pynvml>=11.5",
        "absl-py>=2.0",
        "filelock>=3.12",
        "psutil>=5.9",
        "PyYAML>=6.0",
        # The web UI's /metrics in Prometheus' text format (escaping, types).
        "prometheus-client>=0.17",
    ],
    extras_require={
        "ray": ["ray[default]>=2.40,<3"],
        "test": [
            "pytest>=8",
            # Beam's own runner test suites, which we subclass, import these.
            "PyHamcrest>=2.0",
            "tenacity>=8.0",
            # The staging tests build a client's --setup_file sdist offline.
            "wheel>=0.40",
            "pytest-timeout>=2.3",
            "mypy>=1.10",
            "matplotlib>=3.8",
            # The web UI's browser test drives Debian's /usr/bin/chromium (never
            # `playwright install`: no browser download).
            "playwright>=1.40",
        ],
        "bench": ["matplotlib>=3.8"],
    },
    entry_points={
        "console_scripts": [
            "beam-gpu-runner=beam_gpu_runner.cli:main",
        ],
        "beam_gpu_runner.external_resource_drivers": [
            "gpu=beam_gpu_runner.drivers.gpu:GpuDriverFactory",
            "testing=beam_gpu_runner.drivers.testing:TestingDriverFactory",
        ],
    },
)
