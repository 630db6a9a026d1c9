"""Writes a tiny synthetic dataset in the real on-disk layout (procedural objects, rendered views).

    python -m data_pipelines.synthetic --layout=pix3d --out=DIR --num_objects=N
    python -m data_pipelines.synthetic --layout=omniobject3d --out=DIR --num_objects=N

An existing non-empty --out folder is refused unless --overwrite (which clears it first).
"""

from __future__ import annotations

import os
import shutil
import sys

from data_pipelines.synthetic.omniobject3d import write_omniobject3d
from data_pipelines.synthetic.pix3d import write_pix3d
from nd3d_jax.config_cli import ArgumentParser, fail

WRITERS = {"omniobject3d": write_omniobject3d, "pix3d": write_pix3d}
DEFAULT_VIEWS = {"omniobject3d": 24, "pix3d": 2}  # renders per object / photos per model


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m data_pipelines.synthetic", description=__doc__)
    parser.add_argument("--layout", required=True, choices=sorted(WRITERS))
    parser.add_argument("--out", required=True, help="dataset root to write")
    parser.add_argument("--num_objects", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--num_views",
        type=int,
        default=None,
        help="renders per object (omniobject3d, 24) or photos per model (pix3d, 2)",
    )
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument(
        "--overwrite", action="store_true", help="clear an existing non-empty --out folder first"
    )
    args = parser.parse_args(argv)
    if args.num_views is None:
        args.num_views = DEFAULT_VIEWS[args.layout]
    if args.num_objects < 1 or args.num_views < 1 or args.image_size < 16:
        parser.error("--num_objects and --num_views must be >= 1, --image_size >= 16")
    if os.path.isfile(args.out):
        fail(f"--out={args.out} is a file; give a folder")
    if os.path.isdir(args.out) and os.listdir(args.out):
        if not args.overwrite:
            fail(f"--out={args.out} is not empty; give a new folder, or --overwrite to clear it")
        shutil.rmtree(args.out)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    written = WRITERS[args.layout](
        args.out, args.num_objects, args.seed, args.num_views, args.image_size, log=log
    )
    what = "images" if args.layout == "pix3d" else "objects"
    print(f"wrote {len(written)} {what} in the {args.layout} layout to {args.out}")


if __name__ == "__main__":
    main()
