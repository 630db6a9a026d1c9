"""The device mesh, logical-axis rules and the shardings of state and batches.

Mesh axes ('data', 'fsdp'): batches split over both, parameters (and their optimizer state)
split over 'fsdp' along the dimension whose logical axis the rules map to it. A dimension that
the mesh axis does not divide stays replicated (small biases, odd widths).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nd3d_jax.errors import UserError

MESH_AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")  # the leading batch axis spans the whole mesh

# Logical parameter axes -> mesh axes. FSDP shards the model width; conv kernels by output.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("conv_out", "fsdp"),
    ("mlp", None),
    ("heads", None),
    ("vocab", None),
    ("position", None),
    ("proj", None),
    ("prior", None),
    ("prior_in", None),
    ("embed_out", None),
    ("conv_h", None),
    ("conv_w", None),
    ("conv_in", None),
    ("out", None),
    ("mlp_in", None),
    ("latent", None),  # Shap-E latent width
    ("vectors", None),  # Shap-E params projection rows
    ("channels", None),
)


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence | None = None) -> Mesh:
    """The ('data', 'fsdp') mesh of the trainer and the refinement (`jax.make_mesh`, auto
    axes: shardings propagate as in GSPMD); -1 takes what the other axis leaves."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n or data < 1 or fsdp < 1:
        raise UserError(
            f"mesh data={data} x fsdp={fsdp} does not match {n} devices "
            "(set --config.mesh.data / --config.mesh.fsdp / --config.mesh.num_devices)"
        )
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh((data, fsdp), MESH_AXES, auto, devices=devices)


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """Replicates any dimension the assigned mesh axes do not divide."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axes if names and dim % size == 0 else None)
    return PartitionSpec(*out)


def tree_shardings(boxed_abstract, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an (abstract) tree whose leaves carry logical axis names (boxed
    parameters, or an optimizer state initialised on them); unnamed leaves replicate."""
    specs = nn.get_partition_spec(boxed_abstract)
    mesh_specs = nn.logical_to_mesh(specs, rules)
    shapes = nn.unbox(boxed_abstract)

    def one(spec, leaf):
        spec = spec if isinstance(spec, PartitionSpec) else PartitionSpec()
        return NamedSharding(mesh, _fit(spec, tuple(leaf.shape), mesh))

    return jax.tree.map(one, mesh_specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


param_shardings = tree_shardings


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Per-process numpy arrays -> global jax Arrays split over the mesh's batch axes."""
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()
    }
