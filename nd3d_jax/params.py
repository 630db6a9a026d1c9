"""`python -m nd3d_jax.params --config=configs/X.py[:args] [--config.a.b=v ...]`

The parameter breakdown of a config's model by group (trainable / frozen), from shapes alone:
nothing is initialised or loaded beyond the configs in the weight folders. For example
`python -m nd3d_jax.params --config=configs/neurodiff3d.py:variant=random` prints the paper
model's table.
"""

from __future__ import annotations

import ml_collections

from nd3d_jax import cli


def breakdown(config: ml_collections.ConfigDict) -> dict[str, tuple[int, int]]:
    """{group: (trainable, frozen)} parameter counts of the config's stage."""
    from flax import linen as nn

    from nd3d_jax.stages import get_stage

    stage = get_stage(config)
    shapes = nn.unbox(stage.abstract_params())
    return stage.parameter_groups(shapes, stage.trainable_mask(shapes))


def table(groups: dict[str, tuple[int, int]]) -> str:
    """A markdown table: one row a group, then the totals."""
    lines = ["| group | trainable | frozen |", "|---|---:|---:|"]
    lines += [f"| {name} | {t:,} | {f:,} |" for name, (t, f) in groups.items()]
    t, f = (sum(v[i] for v in groups.values()) for i in (0, 1))
    lines.append(f"| **total {t + f:,}** | {t:,} | {f:,} |")
    return "\n".join(lines)


def main(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
    print(table(breakdown(config)))


# cli.run options: the train schema; of its paths only the weight folders (read here)
CLI = dict(command="train", needs_workdir=False, path_kinds=("weights",))

if __name__ == "__main__":
    cli.run(main, **CLI)
