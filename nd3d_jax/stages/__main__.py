"""`python -m nd3d_jax.stages --config=configs/X.py[:variant]`: the parameter breakdown of a
stage's model by group (trainable / frozen), from shapes alone (nothing is initialised or
loaded beyond the configs in the weight folders)."""

from __future__ import annotations

import argparse

from flax import linen as nn

from nd3d_jax.config_cli import load_config
from nd3d_jax.stages import get_stage


def breakdown(config) -> dict[str, tuple[int, int]]:
    stage = get_stage(config)
    shapes = nn.unbox(stage.abstract_params())
    return stage.parameter_groups(shapes, stage.trainable_mask(shapes))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m nd3d_jax.stages", description=__doc__)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    groups = breakdown(load_config(args.config))
    print("| group | trainable | frozen |\n|---|---:|---:|")
    for name, (t, f) in groups.items():
        print(f"| {name} | {t:,} | {f:,} |")
    t, f = (sum(v[i] for v in groups.values()) for i in (0, 1))
    print(f"| **total** ({t + f:,}) | {t:,} | {f:,} |")


if __name__ == "__main__":
    main()
