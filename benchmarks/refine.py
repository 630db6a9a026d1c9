"""`python -m nd3d_jax.benchmark refine`: refinement seconds and fidelity per thin-part shape,
the faithful recipe beside the paper's printed one, in the same run.

Shapes: `nd3d_jax.geometry.thin_parts` (a table on 2-cell legs, a lamp's stem, a mug's handle,
a ring, a thin fin), each alone at full size, coarse mesh = the exact field's surface at 128^3
(as Shap-E's), field = the exact SDF; and the `make demo` chair (a synthetic mesh, the mesh-file
path's libigl field). Recipes (configs/generate.py's refine sections):

    faithful        the default (paper variant)     faithful_demo   :demo (half the steps)
    faithful_nodal  the coarse field on the grid, no fit (faithful.steps = 0)
    mlp_levers      the levers without the coarse base: Fourier features, 16k x 3 band
                    points drawn afresh, a schedule, 200 steps, the MLP alone from a sphere
    paper           the printed recipe (2048 key points, 50 AdamW steps at 1e-4, 1024 wide)
    paper_demo      the old :demo one (the printed recipe, 256 wide, 300 steps at 1e-3)

Seconds are warm (the second call; the first compiles). `--quick`: one shape, a 16^3 grid.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from nd3d_jax.benchmark import BenchOptions, Record, device_name
from nd3d_jax.geometry import analytic, thin_parts
from nd3d_jax.geometry.extract import mesh_from_sdf
from nd3d_jax.geometry.refine import RefineSettings, refine_mesh
from nd3d_jax.metrics.fidelity import refinement_fidelity


def recipes(quick: bool) -> dict[str, RefineSettings]:
    from configs.generate import get_config
    from nd3d_jax.pipeline.generator import refine_settings

    default, demo = (refine_settings(get_config(v)) for v in ("paper", "demo"))
    out = {
        "faithful": default,
        "faithful_demo": demo,
        "faithful_nodal": dataclasses.replace(
            default, faithful=dataclasses.replace(default.faithful, steps=0)
        ),
        "mlp_levers": dataclasses.replace(
            default, faithful=dataclasses.replace(default.faithful, base="none")
        ),
        "paper": dataclasses.replace(default, recipe="paper"),
        "paper_demo": dataclasses.replace(
            default,
            recipe="paper",
            hidden_dim=256,
            out_hidden_dim=128,
            steps=300,
            learning_rate=1e-3,
        ),  # fmt: skip
    }
    if quick:
        small = dict(resolution=16, hidden_dim=32, out_hidden_dim=16, num_key_points=256,
                     num_uniform_points=256)  # fmt: skip
        out = {k: dataclasses.replace(out[k], **small) for k in ("faithful", "paper")}
    return out


def shapes(quick: bool):
    """(name, coarse mesh, field) triples."""
    from data_pipelines.synthetic.shapes import make_object
    from nd3d_jax.pipeline.coarse import mesh_field, normalised

    names = ("table",) if quick else tuple(thin_parts.SHAPES)
    for name in names:
        sdf = thin_parts.SHAPES[name]()
        coarse = mesh_from_sdf(lambda p, f=sdf: np.asarray(f(p)), 48 if quick else 128, 0.7)
        yield name, coarse, analytic.analytic_field(sdf)
    if not quick:
        chair = normalised(make_object("chair", 1), "chair")  # primitives, faces inside too
        yield "demo_chair", chair, mesh_field(chair)


def suite(opts: BenchOptions) -> list[Record]:
    records = []
    for shape, coarse, field in shapes(opts.quick):
        for recipe, settings in recipes(opts.quick).items():
            times = []
            for _ in range(2):  # the first call compiles
                t = time.perf_counter()
                result = refine_mesh(coarse, field, settings)
                times.append(time.perf_counter() - t)
            fid = refinement_fidelity(result.mesh, coarse)
            records.append(
                Record(
                    name=f"refine_{shape}_{recipe}",
                    device=device_name(),
                    shape=f"R={settings.resolution}, {len(result.mesh.faces)} faces",
                    median_s=times[-1],
                    repeats=1,
                    notes=", ".join(
                        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in fid.items()
                    ),  # fmt: skip
                )
            )
    return records
