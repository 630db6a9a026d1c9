"""nd3d_jax: the JAX/Flax reimplementation of NeuroDiff3D (image + text -> textured 3D mesh)."""

from setuptools import find_packages, setup

setup(
    name="nd3d_jax",
    version="0.1.0",
    description="NeuroDiff3D in JAX/Flax: image + text to a textured 3D object",
    packages=find_packages(
        include=[
            "nd3d_jax",
            "nd3d_jax.*",
            "data_pipelines",
            "data_pipelines.*",
            "configs",
            "benchmarks",
        ]
    ),
    # jax >= 0.10 needs 3.11; tarfile's "data" extraction filter (OmniObject3D tarballs) 3.11.4
    python_requires=">=3.11.4",
    # Ranges tested on CPU with Python 3.11 (see README); jax 0.11.x (Python >= 3.12) on the
    # GPU host. Accelerators: the extras below (README "Install on a GPU or TPU host").
    install_requires=[
        "jax>=0.10.2,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1,<2",
        "einops>=0.8,<0.9",
        "trimesh>=5.2,<6",
        "numpy>=2.0,<3",
        "scipy>=1.14,<1.18",  # 1.18 drops sqrtm(disp=), which clean-fid (a test reference) uses
        "absl-py>=2.1,<3",
        "pillow>=12,<14",
        "charset-normalizer>=3,<4",  # trimesh decodes non-UTF-8 OBJ files with it
        "rtree>=1.3,<2",  # trimesh's closest-point queries (SDF targets)
        "fast-simplification>=0.2,<0.3",  # trimesh's quadric decimation (condition meshes)
        "xatlas>=0.0.11,<0.1",  # UV unwrapping for texture baking (nd3d_jax.texture)
        # SDF signs (fast winding number), closest points, face orientation repair (with embree)
        "libigl>=2.6.3,<2.7",
        # Data preparation and loading: tfds (TF encodes images) writing ArrayRecord, grain.
        "tensorflow-cpu>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources>=7.1,<8",  # tfds imports it lazily
        "array-record>=0.8.6,<0.9",
        "grain>=0.2.18,<0.3",
        "tqdm>=4.67,<5",
        "tensorboard>=2.20,<3",  # to view the trainer's event files
        "tensorboardX>=2.6.5,<2.7",  # writes them without importing TensorFlow
        # Weight import: safetensors reads checkpoints; transformers only for the CLIP tokenizer.
        "safetensors>=0.8,<0.9",
        "transformers>=5.24,<6",
    ],
    extras_require={
        # Preparation past one machine: tfds's Apache Beam support (data_pipelines/builders/
        # beam.py; Dataflow, Flink, Spark, or the DirectRunner). Beam 2.77 caps protobuf < 7
        # (and pyarrow < 26, python-dateutil < 3); googleapis-common-protos needs >= 6.33.5.
        # Tested: protobuf 6.33.6, pyarrow 25.0.1 beside tensorflow-cpu 2.21, tfds 4.9.10,
        # grain 0.2.18, tensorboard 2.21 (pip check clean).
        "beam": ["apache-beam>=2.77,<2.78", "protobuf>=6.33.5,<7"],
        "test": [
            "apache-beam>=2.77,<2.78",  # the Beam tests (the `beam` extra)
            "protobuf>=6.33.5,<7",
            "pytest>=9,<10",
            "pytest-xdist>=3.8,<4",  # two workers: the suite is compile-bound, one core each
            "ruff>=0.17.6,<0.18",
            "scikit-image>=0.26,<0.27",
            "embreex>=4.4,<5",
            # PyTorch references (transformers models) in the tests; 2.13.0 is the CPU build.
            "torch==2.13.0",
            "diffusers>=0.42.1,<0.43",
            # metric references (CLIPScore); lpips, clean-fid and torchvision go to their own
            # folder (Makefile TORCH_REFS; why: tests/torch_references.py)
            "torchmetrics>=1.9,<2",
            # the web demo and its browser test (Debian's chromium, installed by `make test`)
            "gradio>=6.31,<7",
            "gradio_client>=2.7,<3",
            "playwright>=1.65,<2",
        ],
        "app": ["gradio>=6.31,<7"],
        # jax's own accelerator extras (the CUDA plugin with its pip CUDA libraries, libtpu),
        # bounded like `jax` above
        "cuda12": ["jax[cuda12]>=0.10.2,<0.12"],
        "cuda13": ["jax[cuda13]>=0.10.2,<0.12"],
        "tpu": ["jax[tpu]>=0.10.2,<0.12"],
        "bench": ["scikit-image>=0.26,<0.27", "embreex>=4.4,<5", "torch==2.13.0"],
    },
)
