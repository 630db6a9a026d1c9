"""Shap-E (P1, "Shap-E is first used to generate a coarse 3D shape"): conditioning, sampling and
the implicit field of a loaded pipeline folder, all jitted and sharded over the batch.

    shap_e = load_shap_e("weights/shap-e-img2img")
    latents = shap_e.sample_latents(jax.random.key(0), image=uint8_nhwc)   # (B, 1024, 1024)
    sdf, rgb = shap_e.field(latents, points)      # SDF negative inside (ours), sRGB colours
    meshes = shap_e.coarse_mesh(latents)          # trimesh, vertex colours

Sampling equals the diffusers pipelines with `output_type="latent"`: the same conditioning
(text: CLIP `text_embeds`, L2-normalised, times sqrt(dim); image: CLIP patch tokens before the
post-LayerNorm; zeros for the unconditional branch), the same Heun/Karras schedule, the whole
loop in one `lax.scan`. `initial_noise` is unit Gaussian noise; it is scaled by the schedule's
`init_noise_sigma` (the text pipeline does the same with given latents, the img2img pipeline
uses given latents unscaled: pass it `noise * init_noise_sigma` to compare).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from nd3d_jax.diffusion.heun import HeunConfig, heun_sample, heun_schedule
from nd3d_jax.errors import UserError
from nd3d_jax.models.shap_e_prior import text_condition
from nd3d_jax.prior.image import ImageProcessor
from nd3d_jax.sharding import make_mesh
from nd3d_jax.weights.clip import CLIPTokenizer
from nd3d_jax.weights.shap_e import ShapEWeights, component
from nd3d_jax.weights.shap_e import load_shap_e as load_weights

# Guidance when none is given: Shap-E's own examples (text 15, image 3).
DEFAULT_GUIDANCE = {"text": 15.0, "image": 3.0}
F_TEX_SOURCES = ("hidden", "hidden_first")


@dataclasses.dataclass(frozen=True)
class FieldSettings:
    """How the field is queried and what the refinement reads from it (config values).

    f_tex: the paper's 64-D texture feature at a point (67 = 3 + 64 input of the SDF MLP; the
    paper does not say which 64). "hidden": the STF MLP's last hidden activation (the input of
    its SDF and colour heads, 256 wide in Shap-E) average-pooled to 64 channels in contiguous
    groups; "hidden_first": its first 64 channels.
    """

    chunk: int = 65536  # points per MLP call
    f_tex: str = "hidden"
    f_tex_dim: int = 64

    def __post_init__(self):
        if self.f_tex not in F_TEX_SOURCES:
            raise UserError(f"f_tex={self.f_tex!r}: must be one of {F_TEX_SOURCES}")
        if self.chunk < 1:
            raise UserError(f"field chunk must be >= 1, got {self.chunk}")


FOLDER_HINT = {"text": "openai/shap-e", "image": "openai/shap-e-img2img"}


def check_input(kind: str, folder: str, given: str) -> None:
    """A text pipeline takes texts, an img2img pipeline images: a one-line error otherwise."""
    if kind != given:
        article = "an" if given == "image" else "a"
        raise UserError(
            f"{folder} is a {kind}-to-3D Shap-E pipeline; it cannot take {article} {given} "
            f"(for {given} input use the {FOLDER_HINT[given]} folder)"
        )


def pooling_matrix(width: int, out: int) -> np.ndarray:
    """(width, out) averaging weights: output j is the mean of channels [j w/out, (j+1) w/out)
    (each channel's overlap with the bin, as adaptive average pooling)."""
    m = np.zeros((width, out), np.float32)
    for j in range(out):
        lo, hi = j * width / out, (j + 1) * width / out
        for i in range(int(math.floor(lo)), int(math.ceil(hi))):
            m[i, j] = min(hi, i + 1) - max(lo, i)
    return m / m.sum(0, keepdims=True)


def data_mesh(batch: int) -> jax.sharding.Mesh:
    """The ('data', 'fsdp') mesh over the largest device count that divides the batch (fsdp 1:
    the parameters are replicated)."""
    n = math.gcd(batch, jax.device_count())
    return make_mesh(data=n, fsdp=1, devices=jax.devices()[:n])


class ShapE:
    """A loaded Shap-E pipeline: modules, parameters, scheduler and preprocessing."""

    def __init__(self, weights: ShapEWeights, settings: FieldSettings | None = None):
        self.kind, self.folder = weights.kind, weights.folder
        self.prior, self.prior_params = weights.prior
        self.renderer, self.renderer_params = weights.renderer
        self.encoder, self.encoder_params = weights.encoder
        self.settings = settings or FieldSettings()
        self.scheduler = HeunConfig.from_folder(component(self.folder, "scheduler"))
        if self.kind == "text":
            c = self.encoder.config
            self.tokenizer = CLIPTokenizer(component(self.folder, "tokenizer"))
            self.max_length = min(
                int(self.tokenizer.hf.model_max_length), c.max_position_embeddings
            )
        else:
            self.image_processor = ImageProcessor.from_folder(
                component(self.folder, "image_processor")
            )
        width = self.renderer.config.d_hidden
        if self.settings.f_tex == "hidden":
            self._f_tex = pooling_matrix(width, self.settings.f_tex_dim)
        else:
            if width < self.settings.f_tex_dim:
                raise UserError(f"f_tex='hidden_first' needs d_hidden >= 64, got {width}")
            self._f_tex = np.eye(width, self.settings.f_tex_dim, dtype=np.float32)
        self._programs: dict = {}

    @property
    def latent_shape(self) -> tuple[int, int]:
        c = self.prior.config
        return c.num_embeddings, c.embedding_dim

    # ------------------------------------------------------------------ conditioning
    def encode_text(self, text) -> jax.Array:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
            raise UserError("text must be a non-empty string (or a list of them)")
        tokens = self.tokenizer(texts, max_length=self.max_length)
        # the pipeline pads with id 0 and passes no attention mask (causal: EOS never sees pads)
        ids = np.where(tokens["attention_mask"] > 0, tokens["input_ids"], 0).astype(np.int32)
        embeds = self._program("text_encoder")(self.encoder_params, ids)
        return text_condition(embeds)

    def encode_image(self, image) -> jax.Array:
        pixels = self.image_processor(image)
        v = self.encoder.config
        if pixels.shape[1:3] != (v.image_size, v.image_size):
            raise UserError(
                f"{self.folder}: the image processor gives {pixels.shape[1]}x{pixels.shape[2]} "
                f"pixels, the image encoder takes {v.image_size}x{v.image_size}"
            )
        return self._program("image_encoder")(self.encoder_params, pixels)

    def condition(self, image=None, text=None) -> jax.Array:
        if (image is None) == (text is None):
            raise UserError("give exactly one of image= and text=")
        check_input(self.kind, self.folder, "text" if text is not None else "image")
        return self.encode_text(text) if text is not None else self.encode_image(image)

    # ------------------------------------------------------------------ sampling
    def sample_latents(
        self,
        key: jax.Array | None = None,
        image=None,
        text=None,
        num_steps: int = 64,
        guidance: float | None = None,
        initial_noise=None,
        return_all: bool = False,
    ) -> jax.Array:
        """Latents (B, 1024, 1024) for B images (NHWC uint8 / float in [0, 1]) or B texts."""
        cond = self.condition(image=image, text=text)
        b = cond.shape[0]
        guidance = DEFAULT_GUIDANCE[self.kind] if guidance is None else float(guidance)
        if not math.isfinite(guidance):
            raise UserError(f"guidance must be finite, got {guidance}")
        schedule = heun_schedule(self.scheduler, num_steps)
        shape = (b, *self.latent_shape)
        if initial_noise is None:
            if key is None:
                raise UserError("sample_latents needs a key or initial_noise")
            noise = jax.random.normal(key, shape, jnp.float32)
        else:
            noise = jnp.asarray(initial_noise, jnp.float32)
            if noise.size != math.prod(shape):
                raise UserError(f"initial_noise has shape {noise.shape}, expected {shape}")
            noise = noise.reshape(shape)
        mesh = data_mesh(b)
        batch, rep = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        cond, noise = jax.device_put((cond, noise), batch)
        params = self._placed("prior", self.prior_params, rep)
        run = self._sampler(num_steps, guidance > 1.0, return_all, mesh)
        x_init = noise * jnp.float32(schedule.init_noise_sigma)
        return run(params, cond, x_init, jnp.float32(guidance))

    def _sampler(self, num_steps: int, cfg: bool, return_all: bool, mesh):
        key = ("sample", num_steps, cfg, return_all, mesh.devices.size)
        if key in self._programs:
            return self._programs[key]
        schedule = heun_schedule(self.scheduler, num_steps)
        prior, config = self.prior, self.scheduler

        def run(params, cond, x_init, guidance):
            def denoise(x, t):
                if not cfg:
                    return prior.apply({"params": params}, x, t, cond)
                both = prior.apply(
                    {"params": params},
                    jnp.concatenate([x, x]),
                    t,
                    jnp.concatenate([jnp.zeros_like(cond), cond]),
                )
                uncond, conditional = jnp.split(both, 2)
                return uncond + guidance * (conditional - uncond)

            return heun_sample(denoise, x_init, schedule, config, return_all=return_all)

        self._programs[key] = jax.jit(run)
        return self._programs[key]

    def _placed(self, name: str, params, sharding: NamedSharding):
        """`params` placed once per device set (replicated), not at every call."""
        key = ("params", name, sharding.mesh.devices.size)
        if key not in self._programs:
            self._programs[key] = jax.device_put(params, sharding)
        return self._programs[key]

    def _program(self, name: str):
        if name not in self._programs:
            encoder = self.encoder
            self._programs[name] = jax.jit(lambda p, x: encoder.apply({"params": p}, x))
        return self._programs[name]

    # ------------------------------------------------------------------ the field
    def field(self, latents, points) -> tuple[jax.Array, jax.Array]:
        """(sdf (B, N), rgb (B, N, 3)) at `points` ((N, 3) shared or (B, N, 3)). The SDF is
        Shap-E's tanh channel negated: **negative inside**, as the rest of the project."""
        sdf, rgb, _ = self.query(latents, points)
        return sdf, rgb

    def query(self, latents, points) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(sdf (B, N), rgb (B, N, 3), f_tex (B, N, 64)) in chunks of `settings.chunk` points."""
        latents = jnp.asarray(latents, jnp.float32)
        if latents.ndim != 3:
            raise UserError(f"latents must be (batch, tokens, width), got {latents.shape}")
        points = jnp.asarray(points, jnp.float32)
        if points.ndim == 2:
            points = jnp.broadcast_to(points, (latents.shape[0], *points.shape))
        if points.ndim != 3 or points.shape[-1] != 3 or points.shape[0] != latents.shape[0]:
            raise UserError(f"points must be (N, 3) or (batch, N, 3), got {points.shape}")
        return self._query_program()(self.renderer_params, latents, points)

    def _query_program(self):
        if "query" not in self._programs:
            renderer, chunk, pool = self.renderer, self.settings.chunk, jnp.asarray(self._f_tex)

            def run(params, latents, points):
                weights = renderer.apply({"params": params}, latents, method=renderer.project)

                def one(chunk_points):  # (B, c, 3) -> (sdf, rgb, f_tex) of the chunk
                    sdf, rgb, hidden = renderer.apply(
                        {"params": params}, weights, chunk_points, method=renderer.query
                    )
                    return -sdf, rgb, hidden @ pool  # Shap-E's SDF is positive inside

                b, n = points.shape[:2]
                c = min(chunk, n)
                padded = jnp.pad(points, ((0, 0), (0, -n % c), (0, 0)))
                chunks = jnp.moveaxis(padded.reshape(b, -1, c, 3), 1, 0)  # (n / c, B, c, 3)
                out = jax.lax.map(one, chunks)
                return jax.tree.map(
                    lambda a: jnp.moveaxis(a, 0, 1).reshape(b, -1, *a.shape[3:])[:, :n], out
                )

            self._programs["query"] = jax.jit(run)
        return self._programs["query"]

    def coarse_field(self, latent):
        """The coarse field of P2 (`refine_mesh`) for one latent: points (N, 3) numpy ->
        (sdf (N,), f_tex (N, 64)) numpy. N is padded to a multiple of the chunk (few shapes)."""
        latent = jnp.asarray(latent)[None] if jnp.ndim(latent) == 2 else jnp.asarray(latent)

        def field(points: np.ndarray):
            points = np.asarray(points, np.float32)
            n = len(points)
            pad = -n % min(self.settings.chunk, max(n, 1))
            padded = np.pad(points, ((0, pad), (0, 0)))
            sdf, _, feats = self.query(latent, padded)
            return np.asarray(sdf[0, :n]), np.asarray(feats[0, :n])

        return field

    def coarse_mesh(self, latents, resolution: int = 128, grid: str = "exact"):
        """One coloured `trimesh.Trimesh` per latent (see `nd3d_jax.prior.mesh`)."""
        from nd3d_jax.prior.mesh import coarse_meshes

        return coarse_meshes(self, latents, resolution, grid)


def load_shap_e(
    path: str,
    dtype=jnp.float32,
    remat: bool = False,
    settings: FieldSettings | None = None,
    variant: str | None = None,
) -> ShapE:
    """A `ShapE` from a diffusers Shap-E pipeline folder (`openai/shap-e` for text,
    `openai/shap-e-img2img` for images) or its converted copy. `dtype`: the compute dtype of
    the prior and the CLIP encoder (bfloat16 on accelerators); parameters stay float32.
    `variant`: the weight variant to read (e.g. "fp16"; default: plain, else the only one)."""
    path = os.path.expanduser(str(path))
    return ShapE(load_weights(path, dtype, remat=remat, variant=variant), settings)
