"""`python -m nd3d_jax.render MESH_FILE --out=IMAGE.png [--size=512] [--views=4] [--kind=normal]`

Renders a preview grid of any mesh file trimesh reads: the object is normalised to the unit
cube, and `--views` cameras on a ring look at its centre. Kinds: `normal` (world normals as
colours), `depth` (near = bright), `color` (vertex colours, or grey shading without them).
"""

from __future__ import annotations

import os

from PIL import Image

from nd3d_jax import compile_cache
from nd3d_jax.config_cli import ArgumentParser, fail
from nd3d_jax.geometry.mesh_ops import load_mesh
from nd3d_jax.render.preview import KINDS, render_preview


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m nd3d_jax.render", description=__doc__)
    parser.add_argument("mesh", help="any mesh file trimesh reads (OBJ, PLY, GLB, ...)")
    parser.add_argument("--out", required=True, help="output PNG")
    parser.add_argument("--size", type=int, default=512, help="pixels per view")
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--kind", choices=KINDS, default="normal")
    parser.add_argument("--up", choices=("x", "y", "z"), default="y", help="the mesh's up axis")
    args = parser.parse_args(argv)
    if args.size < 8 or args.views < 1:
        parser.error("--size must be >= 8 and --views >= 1")
    # every check before the (slow) rendering
    suffix = os.path.splitext(args.out)[1].lower()
    if suffix not in Image.registered_extensions() or os.path.isdir(args.out):
        fail(f"--out={args.out}: give an image file name ending in .png or .jpg")
    if os.path.isdir(args.mesh):
        fail(f"{args.mesh} is a directory; give a mesh file (OBJ, PLY, GLB, ...)")
    try:
        mesh = load_mesh(args.mesh)
        compile_cache.setup()
    except (OSError, ValueError) as e:  # UserError included
        fail(str(e))
    image = render_preview(mesh, args.size, args.views, args.kind, args.up)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    Image.fromarray(image).save(args.out)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]}, {args.views} views)")


if __name__ == "__main__":
    main()
