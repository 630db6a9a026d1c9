"""Generation end to end (paper, "Model inference pipeline", eq 15): image + text -> textured mesh.

    gen = Generator(config)                     # configs/generate.py; loads and compiles once
    result = gen.generate(image="chair.png", text="a wooden chair")
    result.mesh.export("chair.glb")             # trimesh.Trimesh with its baked texture

Stages, each a method you can call alone:
  1. coarse      Shap-E (image, else text) -> coarse mesh + field; or a given coarse mesh (P1)
  2. refine      SDF MLP fit + deformable tet grid + marching tetrahedra (P2, eq 4-7)
  3. conditions  the refined mesh with its coarse colours -> the model's inputs (P3, M1)
  4. multiview   the trained model samples the K-view grid; the VAE decodes it (M2, M3)
  5. bake        UV atlas + back-projection of the K views into a texture (M4)

`generate_many` runs a list of objects in batches: stages 1-3 per object on the host and one
device, stage 4 for the whole batch in one program split over the mesh's data axis, and stage 5
with the caller's `progress` (which writes the files) in `host_workers` threads, so one batch
bakes and exports while the device samples the next. An object that fails (unreadable image,
empty text, a mesh with no surface) is returned (and reported) as its error; the others go on.
Per-request settings (`RequestSettings`: steps, guidance, texture size) and a stage callback
(`on_stage`) serve the web demo through the same path.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import trimesh

from data_pipelines.shape_samples import closest_colors
from nd3d_jax import sharding
from nd3d_jax.errors import UserError
from nd3d_jax.geometry.mesh_ops import MeshError
from nd3d_jax.geometry.refine import RefineSettings, refine_mesh
from nd3d_jax.metrics.fidelity import refinement_fidelity
from nd3d_jax.pipeline import coarse as coarse_lib
from nd3d_jax.pipeline.inputs import ObjectInput, prepare_image, read_image
from nd3d_jax.pipeline.multiview import MultiView
from nd3d_jax.render.maps import grid_split
from nd3d_jax.texture import TextureSettings, bake, coverage, textured_trimesh, unwrap

LOG = logging.getLogger(__name__)
STAGES = ("coarse", "refine", "conditions", "multiview", "bake")
# what a failed object may raise and still leave the batch running
OBJECT_ERRORS = (UserError, MeshError, ValueError, FloatingPointError, OSError)


@dataclasses.dataclass
class Result:
    """Everything one object went through; `mesh` is the textured output."""

    name: str
    input: ObjectInput
    image: np.ndarray  # (S, S, 3) uint8, the prepared input photo the model saw
    coarse: trimesh.Trimesh  # vertex colours (sRGB)
    refined: trimesh.Trimesh  # vertex colours: the coarse colours at each vertex
    views: np.ndarray  # (K, H, W, 3) float [0, 1], the generated views
    normals: np.ndarray  # (K, H, W, 3) [0, 1], the N condition
    t_hat: np.ndarray  # (K, H, W, 3) [0, 1], the T_hat condition
    texture: np.ndarray  # (S, S, 3) float [0, 1]
    coverage: float  # fraction of chart texels some view painted
    mesh: trimesh.Trimesh  # the textured mesh (UVs + PBR base colour)
    seconds: dict[str, float]
    cameras: object = None  # the K view cameras (render.Camera)
    refine_loss: tuple[float, float] = (float("nan"), float("nan"))
    # refined vs coarse (metrics.fidelity: pieces, chamfer_l2, f1@tau) and the texture's
    # coverage (texture.coverage: painted, visible_painted)
    fidelity: dict = dataclasses.field(default_factory=dict)
    settings: RequestSettings | None = None  # what the object was generated with


@dataclasses.dataclass(frozen=True)
class RequestSettings:
    """Per-request settings over the config's (None: the config's value). Each step count and
    texture size is its own compiled program; the guidance scale is traced (no recompile)."""

    num_steps: int | None = None
    guidance: float | None = None
    texture_size: int | None = None


# (object name, stage, fraction of that object done) at the start of each stage
StageCallback = Callable[[str, str, float], None]
STAGE_START = {"coarse": 0.0, "refine": 0.2, "conditions": 0.35, "multiview": 0.4, "bake": 0.7,
               "files": 0.85}  # fmt: skip
FIDELITY_SAMPLES = 10000  # surface samples per mesh for `Result.fidelity`


def refine_settings(config: ml_collections.ConfigDict) -> RefineSettings:
    try:
        return RefineSettings(**config.refine)
    except (TypeError, ValueError) as e:
        raise UserError(f"refine: {e}") from e


def texture_settings(config: ml_collections.ConfigDict) -> TextureSettings:
    values = dict(config.texture)
    values["view_weights"] = tuple(values.get("view_weights") or ())
    try:
        return TextureSettings(**values)
    except TypeError as e:
        raise UserError(f"texture: {e}") from e


def device_mesh(num_devices: int) -> jax.sharding.Mesh:
    """The data-parallel mesh over the first `num_devices` local devices (0: all)."""
    devices = jax.local_devices()
    if num_devices < 0 or num_devices > len(devices):
        raise UserError(f"mesh.num_devices={num_devices}: this host has {len(devices)} devices")
    return sharding.make_mesh(devices=devices[: num_devices or len(devices)])


class Generator:
    """The loaded pipeline: the trained model, its compiled sampler, Shap-E when needed."""

    def __init__(self, config: ml_collections.ConfigDict, log: Callable[[str], None] | None = None,
                 model: MultiView | None = None):  # fmt: skip
        """`model`: an already built `MultiView` (benchmarks), else `config.params`'s."""
        self.config = config
        self.log = log or LOG.info
        if model is None and not config.params:
            raise UserError(
                "no model: pass --params=WORKDIR, a trainer workdir (`make demo` writes out/demo)"
            )
        if config.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {config.batch_size}")
        self.refine_settings = refine_settings(config)
        self.texture_settings = texture_settings(config)
        self.mesh = model.mesh if model is not None else device_mesh(config.mesh.num_devices)
        # the batch splits over the data axis: a multiple of the device count
        n = self.mesh.size
        self.batch_size = -(-config.batch_size // n) * n
        t = time.perf_counter()
        self.model = model or MultiView(config.params, config, self.mesh)
        self.log(f"model from {self.model.params_path} ({time.perf_counter() - t:.1f}s)")
        self._shap_e = {}
        self.host_workers = int(config.get("host_workers", 0))

    # ------------------------------------------------------------------ stage 1
    def shap_e(self, kind: str):
        """The Shap-E pipeline for 'image' or 'text' input (loaded once)."""
        if kind not in self._shap_e:
            from nd3d_jax.prior.shap_e import FieldSettings, load_shap_e

            p = self.config.prior
            folder = p.image_weights if kind == "image" else p.text_weights
            if not folder:
                raise UserError(
                    f"no Shap-E weights for {kind} input: set --config.prior.{kind}_weights="
                    "FOLDER (diffusers layout), or give a --coarse_mesh"
                )
            dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[p.dtype]
            settings = FieldSettings(f_tex=p.f_tex)
            t = time.perf_counter()
            variant = p.get("variant") or None  # configs from before the key: None
            self._shap_e[kind] = load_shap_e(folder, dtype, settings=settings, variant=variant)
            self.log(f"Shap-E ({kind}) from {folder} ({time.perf_counter() - t:.1f}s)")
        return self._shap_e[kind]

    def prior_kind(self, obj: ObjectInput, image: np.ndarray | None) -> str | None:
        """Which Shap-E pipeline makes the object's coarse shape (None: its coarse mesh)."""
        if obj.coarse_mesh:
            return None
        if image is not None and self.config.prior.image_weights:
            return "image"
        if not obj.text.strip():
            raise UserError(f"{obj.name}: no text for Shap-E's text pipeline (and no image one)")
        return "text"

    def latents(self, kind: str, inputs: list, keys: list) -> np.ndarray:
        """Stage 1 for a group of objects at once: Shap-E latents (n, 1024, 1024), each from
        its own key's noise (the batch is sharded inside `ShapE`)."""
        shap_e, p = self.shap_e(kind), self.config.prior
        noise = jnp.stack([jax.random.normal(k, shap_e.latent_shape) for k in keys])
        given = {"image": np.stack(inputs)} if kind == "image" else {"text": list(inputs)}
        return np.asarray(
            shap_e.sample_latents(
                num_steps=p.num_steps, guidance=p.guidance or None, initial_noise=noise, **given
            )  # fmt: skip
        )

    def coarse(self, obj: ObjectInput, latent: np.ndarray | None = None) -> coarse_lib.Coarse:
        """Stage 1's shape: the given coarse mesh, or the Shap-E latent's mesh and field."""
        if obj.coarse_mesh:
            return coarse_lib.from_mesh_file(obj.coarse_mesh)
        kind = "image" if self.config.prior.image_weights and obj.image else "text"
        p = self.config.prior
        return coarse_lib.from_shap_e(self.shap_e(kind), latent, p.resolution, p.grid)

    # ------------------------------------------------------------------ stage 2
    def refine(self, coarse: coarse_lib.Coarse):
        """Stage 2: the refined watertight mesh, coloured from the coarse mesh."""
        result = refine_mesh(coarse.mesh, coarse.field, self.refine_settings)
        refined = result.mesh
        if len(refined.faces) == 0:
            raise UserError("refinement found no surface (the coarse field has no inside)")
        refined.visual.vertex_colors = coarse_lib.rgba(
            closest_colors(coarse.mesh, refined.vertices)
        )
        losses = result.losses if len(result.losses) else np.full(1, np.nan)
        return refined, (float(losses[0]), float(losses[-1]))

    # ------------------------------------------------------------------ stage 5
    def bake(self, refined: trimesh.Trimesh, views: np.ndarray,
             settings: TextureSettings | None = None, cameras=None):  # fmt: skip
        """Stage 5: the atlas of the refined mesh and the K views baked into it (`settings`:
        other texture settings than the config's, e.g. the web demo's texture size; `cameras`:
        the views' cameras when they are not the model's)."""
        s = settings or self.texture_settings
        atlas, unwrapped = unwrap(refined, s)
        fill = closest_colors(refined, unwrapped.vertices)
        cameras = self.model.cameras if cameras is None else cameras
        out = bake(atlas, cameras, views, fill[atlas.source_vertex], s)
        texture = np.asarray(out.texture)
        tex8 = (np.clip(texture, 0, 1) * 255 + 0.5).astype(np.uint8)
        return textured_trimesh(atlas, tex8), texture, coverage(out)

    # ------------------------------------------------------------------ all stages
    def generate(self, image: str | None = None, text: str = "", coarse_mesh: str | None = None,
                 name: str = "object", seed: int | None = None,
                 settings: RequestSettings | None = None,
                 on_stage: StageCallback | None = None) -> Result:  # fmt: skip
        """One object; raises its error."""
        obj = ObjectInput(name, image, text, coarse_mesh)
        (result,) = self.generate_many([obj], seed=seed, settings=settings, on_stage=on_stage)
        if isinstance(result, Exception):
            raise result
        return result

    def generate_many(
        self,
        objects: list[ObjectInput],
        seed: int | None = None,
        indices: list[int] | None = None,
        progress: Callable[[str, Result | Exception], None] | None = None,
        settings: RequestSettings | None = None,
        on_stage: StageCallback | None = None,
    ) -> list[Result | Exception]:
        """Results (or errors) in order; `indices` (default 0..n-1) fold into the seed, so an
        object's result does not depend on its batch. With `host_workers` > 0 the batches flow
        through three stages at once: one thread prepares batch i + 1 (stages 1-3: inputs,
        Shap-E, refinement, conditions), the calling thread samples batch i (stage 4) and
        `host_workers` threads bake batch i - 1 (stage 5) and call `progress(name, result or
        error)` for each object (so what it does, such as writing the files, overlaps the
        device too): make `progress` and `on_stage` thread-safe."""
        seed = self.config.seed if seed is None else seed
        indices = list(range(len(objects))) if indices is None else indices
        settings = settings or RequestSettings()
        on_stage = on_stage or (lambda *_: None)
        report = progress or (lambda *_: None)
        results: dict[str, Result | Exception] = {}
        n = self.batch_size
        chunks = [list(zip(objects[i : i + n], indices[i : i + n], strict=True))
                  for i in range(0, len(objects), n)]  # fmt: skip

        def prepare(chunk):
            return self._prepare_batch(chunk, seed, on_stage, results, report)

        if not self.host_workers:
            for chunk in chunks:
                for job in self._sample_batch(prepare(chunk), settings, on_stage, results, report):
                    job()
            return [results[obj.name] for obj in objects]
        ahead = concurrent.futures.ThreadPoolExecutor(1, "nd3d-prepare")
        pool = concurrent.futures.ThreadPoolExecutor(self.host_workers, "nd3d-host")
        pending: list[concurrent.futures.Future] = []
        try:
            next_batch = ahead.submit(prepare, chunks[0]) if chunks else None
            if chunks:  # the sampling program compiles (or loads) while batch 0 is prepared
                self.model.warm(self.batch_size, settings.num_steps)
            for i in range(len(chunks)):
                ready = next_batch.result()
                if i + 1 < len(chunks):
                    next_batch = ahead.submit(prepare, chunks[i + 1])
                jobs = self._sample_batch(ready, settings, on_stage, results, report)
                done_before, pending = pending, [pool.submit(job) for job in jobs]
                for f in done_before:  # at most two batches baking (bounded memory)
                    f.result()
            for f in pending:
                f.result()
        finally:
            ahead.shutdown(wait=True)
            pool.shutdown(wait=True)
        return [results[obj.name] for obj in objects]

    def _read(self, obj: ObjectInput) -> tuple[np.ndarray | None, str | None]:
        obj.check()
        image = None
        if obj.image:
            c = self.config.image
            image = prepare_image(read_image(obj.image), c.size, c.object_fraction)
        return image, self.prior_kind(obj, image)

    def _prepare(self, obj: ObjectInput, image, latent, seconds: dict, on_stage) -> dict:
        """Stages 1-3 of one object after its latent (host + one device)."""
        t = time.perf_counter()
        coarse = self.coarse(obj, latent)
        seconds["coarse"] = seconds.get("coarse", 0.0) + time.perf_counter() - t
        on_stage(obj.name, "refine", STAGE_START["refine"])
        t = time.perf_counter()
        refined, losses = self.refine(coarse)
        seconds["refine"] = time.perf_counter() - t
        on_stage(obj.name, "conditions", STAGE_START["conditions"])
        t = time.perf_counter()
        if image is None:  # text only: the model sees the coarse shape from the first view
            image = _front_view(coarse.mesh, self.model.cameras, self.config.image.size)
        example = self.model.example(refined, image, obj.text)
        seconds["conditions"] = time.perf_counter() - t
        return {"obj": obj, "image": image, "coarse": coarse.mesh, "refined": refined,
                "example": example, "seconds": seconds, "losses": losses}  # fmt: skip

    def _prepare_batch(self, chunk, seed: int, on_stage, results, report) -> list:
        """Stages 1-3 of a batch: [(prepared object, its sampling key)]; objects that fail are
        reported here."""
        base = jax.random.key(seed)

        def fail(obj, e):
            results[obj.name] = _named_error(obj, e)
            report("", results[obj.name])

        read = []
        for obj, index in chunk:
            key = jax.random.fold_in(base, index)
            on_stage(obj.name, "coarse", STAGE_START["coarse"])
            try:
                t = time.perf_counter()
                image, kind = self._read(obj)
                read.append((obj, key, image, kind, {"coarse": time.perf_counter() - t}))
            except OBJECT_ERRORS as e:
                fail(obj, e)
        latents = {}
        for kind in ("image", "text"):  # Shap-E: each pipeline once for all its objects
            group = [r for r in read if r[3] == kind]
            if not group:
                continue
            t = time.perf_counter()
            try:
                inputs = [r[2] if kind == "image" else r[0].text for r in group]
                out = self.latents(kind, inputs, [jax.random.fold_in(r[1], 0) for r in group])
            except OBJECT_ERRORS as e:
                for r in group:
                    fail(r[0], e)
                continue
            share = (time.perf_counter() - t) / len(group)
            for r, latent in zip(group, out, strict=True):
                latents[r[0].name] = latent
                r[4]["coarse"] += share
        ready = []
        for obj, key, image, _, seconds in read:
            if obj.name in results:
                continue
            try:
                p = self._prepare(obj, image, latents.get(obj.name), seconds, on_stage)
                ready.append((p, jax.random.fold_in(key, 1)))
            except OBJECT_ERRORS as e:
                fail(obj, e)
        return ready

    def _sample_batch(self, ready, settings: RequestSettings, on_stage, results, report):
        """Stage 4 of a prepared batch; returns one stage-5 job per object (bake, fidelity,
        then `report`)."""
        if not ready:
            return []
        for p, _ in ready:
            on_stage(p["obj"].name, "multiview", STAGE_START["multiview"])
        t = time.perf_counter()
        keys = jnp.stack([k for _, k in ready])
        sampled = self.model.sample([p["example"] for p, _ in ready], keys, self.batch_size,
                                    settings.num_steps, settings.guidance)  # fmt: skip
        per_object = (time.perf_counter() - t) / len(ready)
        c = self.model.model_config
        tex = self.texture_settings
        if settings.texture_size:
            tex = dataclasses.replace(tex, size=int(settings.texture_size))

        def finish(i: int, p: dict):
            obj = p["obj"]
            try:
                split = {k: np.asarray(grid_split(v[i], c.grid_rows, c.grid_cols))
                         for k, v in sampled.items()}  # fmt: skip
                p["seconds"]["multiview"] = per_object
                if not np.isfinite(split["sample"]).all():
                    raise FloatingPointError(
                        "the model's views are not finite (NaN/inf): check its parameters"
                    )
                on_stage(obj.name, "bake", STAGE_START["bake"])
                t = time.perf_counter()
                mesh, texture, cover = self.bake(p["refined"], split["sample"], tex)
                p["seconds"]["bake"] = time.perf_counter() - t
                fidelity = refinement_fidelity(p["refined"], p["coarse"], FIDELITY_SAMPLES)
                fidelity.update({f"texture_{k}": v for k, v in cover.items()})
                results[obj.name] = Result(
                    obj.name, obj, p["image"], p["coarse"], p["refined"], split["sample"],
                    split["normals"], split["t_hat"], texture, cover["painted"], mesh,
                    p["seconds"], self.model.cameras, p["losses"], fidelity, settings,
                )  # fmt: skip
            except OBJECT_ERRORS as e:
                results[obj.name] = _named_error(obj, e)
            except Exception as e:  # a bug or a library failure: this object only, logged whole
                LOG.exception("%s: baking failed", obj.name)
                results[obj.name] = _named_error(obj, RuntimeError(f"baking failed: {e!r}"))
            on_stage(obj.name, "files", STAGE_START["files"])
            report(obj.name, results[obj.name])

        return [functools.partial(finish, i, p) for i, (p, _) in enumerate(ready)]


def _named_error(obj: ObjectInput, e: Exception) -> UserError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return UserError(msg if msg.startswith(obj.name) else f"{obj.name}: {msg}")


def _front_view(mesh: trimesh.Trimesh, cameras, size: int) -> np.ndarray:
    """The coloured mesh from the first view camera, headlight-shaded on white (uint8)."""
    from nd3d_jax.render.camera import Camera
    from nd3d_jax.render.maps import color_image, normal_map
    from nd3d_jax.render.rasterize import rasterize

    cam = Camera(cameras.c2w[0], cameras.focal[0] * size / cameras.width,
                 cameras.principal[0] * size / cameras.width, size, size)  # fmt: skip
    v = jnp.asarray(mesh.vertices, jnp.float32)
    f = jnp.asarray(mesh.faces, jnp.int32)
    colors = jnp.asarray(mesh.visual.vertex_colors[:, :3] / 255.0, jnp.float32)
    frags = rasterize(cam, v, f)
    rgb = color_image(frags, f, colors)
    light = 0.35 + 0.65 * jnp.clip(normal_map(frags, v, f) @ cam.c2w[:3, 2], 0.0, 1.0)
    rgb = jnp.where(frags.mask[..., None], rgb * light[..., None], rgb)
    return (np.clip(np.asarray(rgb), 0, 1) * 255 + 0.5).astype(np.uint8)
