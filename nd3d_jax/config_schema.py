"""The schema of every config section, per config kind (its `command` key): what each key
accepts, checked by `nd3d_jax.config_check` before a command runs (`cli.run`).

    train        configs/neurodiff3d.py, configs/demo.py (train, params)
    generate     configs/generate.py (generate, app)
    evaluate     configs/evaluate.py (evaluate, reproduce): generate's keys and its own
    refine_demo  configs/refine_demo.py

Sections that become dataclasses take their schema from the class (`from_dataclass`: types
from the annotations, ranges from its `LIMITS`): `refine` (RefineSettings), `texture`
(TextureSettings) and the inline Hugging Face configs of the sub-models (`model.unet.config`:
UNetConfig, ...). Choices come from the modules that define them (datasets, schedules, ...).
A key here that a config lacks is fine (configs saved before it); a key of a config that no
schema names is reported by the tests (tests/test_config_schema.py), not at run time.
"""

from __future__ import annotations

import functools
import math
import os

from nd3d_jax import config_check as cc
from nd3d_jax.config_check import OPEN, Bool, Choice, Float, Int, Path, Seq, Spec, Str
from nd3d_jax.errors import UserError

DTYPES = ("float32", "bfloat16")
SAMPLERS = ("ddim", "ddpm")
VARIANT = Str(pattern=r"\w+", note="a weight variant such as fp16; empty: plain, else the only")


# ------------------------------------------------------------------------ path checks
def _weights_dir(config) -> str:
    return config.get("weights_dir", "") or ""


def _weight_folder(value: str, config, kind: str) -> str | None:
    """A pretrained model folder under `weights_dir` (or a pipeline folder holding one)."""
    from nd3d_jax.weights.io import model_folder
    from nd3d_jax.weights.paths import resolve

    folder = resolve(_weights_dir(config), value)
    if not os.path.isdir(folder):
        where = f" (under weights_dir {_weights_dir(config)!r})" if folder != value else ""
        return f"no weights folder {folder}{where}; set --config.weights_dir=DIR or this key"
    try:
        folder = model_folder(folder, kind)
    except UserError as e:
        return str(e)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        return f"{folder} has no config.json (not a Hugging Face model folder)"
    return None


def _folder_in_weights(value: str, config) -> str | None:
    from nd3d_jax.weights.paths import resolve

    return cc.PATHS["folder"](resolve(_weights_dir(config), value), config)


def _prepared(value: str, config, dataset: str = "") -> str | None:
    """A tfds folder holding `dataset` (default: `data.dataset`) prepared with
    `data.config_name` (a listing, no data read)."""
    from data_pipelines.input_pipeline import check_prepared

    if (why := cc.PATHS["folder"](value, config)) is not None:
        return f"{why} (the tfds folder `python -m data_pipelines.prepare` writes)"
    data = config.get("data", {})
    try:
        check_prepared(os.path.expanduser(value), dataset or data["dataset"], data["config_name"])
    except UserError as e:
        return str(e)
    return None


def _training_data(value: str, config) -> str | None:
    """`data.data_dir` of a training run: prepared data, unless synthetic data is generated."""
    if config.get("data", {}).get("synthetic_objects"):
        return None  # generated under data.cache_dir; data_dir is not read
    if not value:
        return (
            "not set: give the tfds folder `python -m data_pipelines.prepare` writes (or "
            "--config.data.synthetic_objects=N for generated data)"
        )
    return _prepared(value, config)


def _trained(value: str, config) -> str | None:
    """A trainer WORKDIR: config.json with params_final/ or a checkpoint."""
    if (why := cc.PATHS["folder"](value, config)) is not None:
        return f"{why} (train one with `python -m nd3d_jax.train`; `make demo` writes out/demo)"
    if not os.path.isfile(os.path.join(value, "config.json")):
        return "not a trainer workdir (no config.json): give a `python -m nd3d_jax.train` WORKDIR"
    ckpt = os.path.join(value, "checkpoints")
    if not (os.path.isdir(os.path.join(value, "params_final")) or
            (os.path.isdir(ckpt) and os.listdir(ckpt))):  # fmt: skip
        return "has no params_final/ and no checkpoint: train first"
    return None


def _shap_e(value: str, config, kind: str) -> str | None:
    """A Shap-E pipeline folder of `kind` ("image": shap-e-img2img, "text": shap-e)."""
    from nd3d_jax.weights.shap_e import pipeline_kind

    try:
        got = pipeline_kind(os.path.expanduser(value))
    except UserError as e:
        return str(e)
    return None if got == kind else f"a {got}-to-3D pipeline, not {kind}-to-3D"


cc.PATHS.update(
    weights=_weight_folder,
    weights_folder=_folder_in_weights,
    prepared=_prepared,
    training_data=_training_data,
    trained=_trained,
    shap_e=_shap_e,
)
cc.NEED_VALUE.add("training_data")
cc.PATH_WORDS.update(
    weights="a Hugging Face folder (under weights_dir) or a pipeline folder holding one",
    weights_folder="a folder (under weights_dir)",
    prepared="a tfds folder of `python -m data_pipelines.prepare`",
    training_data="a tfds folder of `python -m data_pipelines.prepare`, unless "
    "data.synthetic_objects > 0",
    trained="a trainer WORKDIR (config.json and params_final/ or checkpoints/)",
    shap_e="a Shap-E pipeline folder",
)


# ------------------------------------------------------------------------ shared sections
def sample_section() -> dict:
    return dict(
        num_steps=Int(1), guidance=Float(0), eta=Float(0, 1), clip=Float(0, note="0: off"),
        sampler=Choice(*SAMPLERS),
    )  # fmt: skip


def cameras_section() -> dict:
    return dict(
        distance=Float(0, low_open=True), fov=Float(0, math.pi, low_open=True, high_open=True),
        elevation_deg=Float(-90, 90), azimuth_deg=Float(-360, 360),
    )  # fmt: skip


def sub_model(name: str, hf: dict) -> dict:
    """`model.<name>`: a weights folder (`path`) or an inline Hugging Face config."""
    return dict(path=Path(f"weights:{name}"), variant=VARIANT, config=hf)


def _sizes(section: dict) -> dict:
    """An inline Hugging Face config's unbounded numbers as sizes: ints >= 1 (token ids and
    shifts >= 0), floats > 0 (epsilons, scales), sequences of ints >= 1."""
    out = dict(section)
    for key, spec in section.items():
        if not isinstance(spec, Spec) or spec.low is not None or spec.high is not None:
            continue
        if spec.kinds == ("int",):
            out[key] = Int(0 if key.endswith(("_id", "shift")) else 1)
        elif spec.kinds == ("float",):
            out[key] = Float(0, low_open=True)
        elif spec.kinds == ("seq",) and spec.item is not None and spec.item.kinds == ("int",):
            out[key] = Seq(Int(1))
    return out


def hf_configs() -> dict:
    """The inline Hugging Face configs, typed by our config classes (keys they ignore pass)
    and bounded as sizes (`_sizes`)."""
    from nd3d_jax.models.clip import CLIPTextConfig, CLIPVisionConfig
    from nd3d_jax.models.resnet import ResNetConfig
    from nd3d_jax.models.t2i_adapter import T2IAdapterConfig
    from nd3d_jax.models.unet import UNetConfig
    from nd3d_jax.models.vae import VAEConfig

    text = cc.from_dataclass(CLIPTextConfig, open_=True)
    text.update(bos_token_id=Int(), pad_token_id=Int())  # the tokenizer's, read by transformers
    clip = {
        "text_config": text,
        "vision_config": cc.from_dataclass(CLIPVisionConfig, open_=True),
        "projection_dim": Int(1),
        OPEN: True,
    }
    classes = dict(resnet=ResNetConfig, unet=UNetConfig, adapter=T2IAdapterConfig, vae=VAEConfig)
    out = {name: _sizes(cc.from_dataclass(cls, open_=True)) for name, cls in classes.items()}
    # the block kinds and layouts our modules implement (their from_hf refuses the others)
    out["resnet"]["layer_type"] = Choice("basic", "bottleneck")
    out["unet"].update(
        down_block_types=Seq(Choice("CrossAttnDownBlock2D", "DownBlock2D"), min_length=1),
        up_block_types=Seq(Choice("CrossAttnUpBlock2D", "UpBlock2D"), min_length=1),
        attention_head_dim=Spec(("int", "seq"), low=1, item=Int(1)),
    )
    out["vae"].update(
        down_block_types=Seq(Choice("DownEncoderBlock2D"), min_length=1),
        up_block_types=Seq(Choice("UpDecoderBlock2D"), min_length=1),
    )
    clip["text_config"], clip["vision_config"] = map(_sizes, (text, clip["vision_config"]))
    return {"clip": clip, **out}


# ------------------------------------------------------------------------ per config kind
# the persistent XLA cache folder (nd3d_jax.compile_cache): empty (the default place), off, DIR
CACHE = Str(note='empty: ~/.cache/nd3d_jax/xla; "off"; or a folder')


def train() -> dict:
    from data_pipelines.prepare import BUILDERS, CONFIG_NAMES
    from nd3d_jax.diffusion.schedules import BETA_SCHEDULES, PREDICTION_TYPES
    from nd3d_jax.stages import STAGES

    hf = hf_configs()
    model = {name: sub_model(name, hf[name]) for name in hf}
    model["vae"]["use"] = Bool()
    model.update(
        tokenizer_path=Path("weights_folder"), pixel_factor=Int(1), grid_rows=Int(1),
        grid_cols=Int(1), tile_size=Int(8), text_length=Int(1), semantic_length=Int(1, 64),
        texture_size=Int(8), num_sampled_faces=Int(1), texture_noise_scale=Float(0),
        fusion_weights=Seq(Float(0), length=3), cond_dropout=Float(0, 1), dtype=Choice(*DTYPES),
        remat=Bool(), context_projection=Bool(), frozen=Seq(Str(empty=False)),
    )  # fmt: skip
    return dict(
        command=Choice("train"),
        stage=Choice(*sorted(STAGES)),
        seed=Int(0),
        compilation_cache=CACHE,
        weights_dir=Path("folder"),
        distributed=dict(
            enabled=Bool(),
            coordinator_address=Str(pattern=r"\S+:\d+", note="HOST:PORT"),
            num_processes=Int(0, note="0: auto-detected"),
            process_id=Int(0, also=(-1,), note="-1: auto-detected"),
            cpu_collectives=Choice("", "gloo", "mpi", "none"),
        ),  # fmt: skip
        model=model,  # before data: the stage is built (and its weights found) first
        data=dict(
            dataset=Choice(*BUILDERS),
            data_dir=Path("training_data"),
            config_name=Choice(*CONFIG_NAMES),
            split=Str(empty=False),
            batch_size=Int(1),
            num_threads=Int(1),
            max_faces=Int(4),
            synthetic_objects=Int(0, note="0: off"),
            cache_dir=Path("out", note="default WORKDIR/data"),
        ),  # fmt: skip
        schedule=dict(
            num_train_timesteps=Int(1),
            beta_schedule=Choice(*BETA_SCHEDULES),
            beta_start=Float(0, 1, low_open=True, high_open=True),
            beta_end=Float(0, 1, low_open=True, high_open=True),
            prediction_type=Choice(*PREDICTION_TYPES),
        ),  # fmt: skip
        optim=dict(
            lr=Float(0, low_open=True),
            warmup_steps=Int(0),
            end_lr_fraction=Float(0, 1),
            b1=Float(0, 1, high_open=True),
            b2=Float(0, 1, high_open=True),
            eps=Float(0, low_open=True),
            weight_decay=Float(0),
            clip_norm=Float(0, note="0: off"),
            grad_accum_steps=Int(1),
            ema_decay=Float(0, 1, high_open=True, note="0: off"),
        ),  # fmt: skip
        mesh=dict(
            data=Int(1, also=(-1,), note="-1: the rest"),
            fsdp=Int(1, also=(-1,)),
            num_devices=Int(0, note="0: every device"),
            rules=Seq(Seq(Spec(("str", "none", "seq")), length=2), note="(logical, mesh) pairs"),
        ),  # fmt: skip
        train=dict(
            total_steps=Int(1),
            log_every=Int(1),
            checkpoint_every=Int(1),
            keep_checkpoints=Int(1),
            preview_every=Int(0, note="0: off"),
            preview_examples=Int(1),
        ),  # fmt: skip
        sample=sample_section(),
    )


def generate() -> dict:
    from nd3d_jax.geometry.refine import RefineSettings
    from nd3d_jax.prior.mesh import GRIDS
    from nd3d_jax.prior.shap_e import F_TEX_SOURCES
    from nd3d_jax.texture.atlas import TextureSettings

    return dict(
        command=Choice("generate"),
        seed=Int(0),
        compilation_cache=CACHE,
        params=Path("trained"),
        batch_size=Int(1),
        host_workers=Int(0, note="0: bake and write in the calling thread"),
        mesh=dict(num_devices=Int(0, note="0: every local device")),
        image=dict(size=Int(16), object_fraction=Float(0, 1, low_open=True)),
        prior=dict(
            image_weights=Path("shap_e:image"),
            text_weights=Path("shap_e:text"),
            num_steps=Int(1),
            guidance=Float(0, note="0: Shap-E's own"),
            resolution=Int(2),
            grid=Choice(*GRIDS),
            dtype=Choice(*DTYPES),
            f_tex=Choice(*F_TEX_SOURCES),
            variant=VARIANT,
        ),  # fmt: skip
        refine=cc.from_dataclass(RefineSettings),
        cameras=cameras_section(),
        sample=sample_section(),
        texture=cc.from_dataclass(TextureSettings),
        output=dict(
            preview=Bool(),
            preview_size=Int(16),
            turntable_frames=Int(0, multiple=8, note="0: no GIF"),
        ),  # fmt: skip
    )


def evaluate() -> dict:
    from data_pipelines.prepare import BUILDERS, CONFIG_NAMES
    from nd3d_jax.metrics.geometry import SCALES

    s = generate()
    s.update(
        command=Choice("evaluate"),
        weights_dir=Path("folder"),
        coarse=Choice("prior", "ground_truth"),
        data=dict(
            data_dir=Path("prepared"),
            dataset=Choice(*BUILDERS),
            config_name=Choice(*CONFIG_NAMES),
            split=Str(empty=False),
            count=Int(0, note="0: every shape"),
        ),  # fmt: skip
        views=dict(count=Int(1), size=Int(8), **cameras_section()),
        metrics=dict(
            # a missing metric folder makes that metric unavailable (the others run)
            cmmd_clip=Str(),
            clip=Str(),
            lpips_alex=Str(),
            lpips_vgg=Str(),
            geometry_samples=Int(1),
            taus=Seq(Float(0, low_open=True), min_length=1),
            geometry_scale=Choice(*SCALES),
            batch_size=Int(1),
        ),  # fmt: skip
        reproduce=dict(
            omniobject3d=Path("prepared:omniobject3d"),
            pix3d=Path("prepared:pix3d"),
            repeats=Int(1),
        ),
    )
    return s


def refine_demo() -> dict:
    from nd3d_jax.geometry.refine import RefineSettings

    positive = Float(0, low_open=True)
    return dict(
        command=Choice("refine_demo"),
        seed=Int(0),
        compilation_cache=CACHE,
        shape=dict(
            kind=Choice("sphere", "torus", "box"),
            radius=positive,
            major=positive,
            minor=positive,
            half_extents=Seq(positive, length=3),
            noise=Float(0),
            noise_frequency=positive,
        ),  # fmt: skip
        coarse_resolution=Int(2),
        refine=cc.from_dataclass(RefineSettings),
        eval_samples=Int(1),
        preview_size=Int(16),
    )


SCHEMAS = {"train": train, "generate": generate, "evaluate": evaluate, "refine_demo": refine_demo}


@functools.cache
def schema_for(kind: str | None) -> dict | None:
    """The schema of configs of `kind` (a `command` key), or None for an unknown kind."""
    return SCHEMAS[kind]() if kind in SCHEMAS else None


def describe(kind: str) -> str:
    """Every key of `kind` with what it accepts, one a line (for docs and --help)."""
    lines = []

    def walk(node, prefix):
        for key, spec in node.items():
            if key == OPEN:
                continue
            if isinstance(spec, dict):
                walk(spec, f"{prefix}{key}.")
            else:
                lines.append(f"{prefix}{key}: {spec.allowed()}")

    walk(schema_for(kind), "")
    return "\n".join(lines)


if __name__ == "__main__":  # python -m nd3d_jax.config_schema [kind]
    import sys

    for kind in sys.argv[1:] or list(SCHEMAS):
        print(f"# {kind}\n{describe(kind)}\n")
