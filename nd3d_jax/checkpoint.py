"""orbax checkpoints of the train state with the grain iterator state beside it.

    ckpt = Checkpointer(workdir / "checkpoints", every=500, keep=3)
    ckpt.save(step, state, data_iterator)          # asynchronous; every `every` steps
    ckpt.save(step, state, data_iterator, force=True)  # on SIGTERM and at the end
    state = ckpt.restore(step, abstract_state, data_iterator)

`abstract_state` holds `jax.ShapeDtypeStruct`s with the shardings wanted now, so a checkpoint
written on one mesh restores onto another. The data item is grain's own handler: one file per
process, so every host resumes its shard where it stopped.
"""

from __future__ import annotations

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp


def _serial_replicas_on_cpu() -> None:
    """On CPU hosts, orbax writes each replicated array from one replica: its default
    replica-parallel writes slice every array per device with an eager op each, which on
    CPU costs seconds of tiny compiles per save and buys nothing (one host, one disk)."""
    if jax.default_backend() == "cpu":
        from orbax.checkpoint import type_handlers

        absl = logging.getLogger("absl")  # orbax warns on every override; this one is ours
        level = absl.level
        absl.setLevel(logging.ERROR)
        try:
            type_handlers.register_type_handler(
                jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True
            )
        finally:
            absl.setLevel(level)


class Checkpointer:
    def __init__(self, directory: str, every: int, keep: int, asynchronous: bool = True):
        _serial_replicas_on_cpu()
        every = max(1, every)
        options = ocp.CheckpointManagerOptions(
            # every `every` steps and no other (orbax would also save the first step); the
            # trainer forces the last step and a preempted one
            should_save_fn=lambda step, last_saved: step % every == 0,
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            create=True,
        )
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator, force: bool = False) -> bool:
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, step: int, abstract_state, data_iterator):
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
        )
        return self.manager.restore(step, args=args)["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def latest_step(directory: str) -> int | None:
    """The newest complete checkpoint step in `directory` (None when there is none); creates
    nothing."""
    if not os.path.isdir(directory):
        return None
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    with ocp.CheckpointManager(os.path.abspath(directory), options=options) as manager:
        return manager.latest_step()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree` carrying `shardings` (restore targets)."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


def load_params(path: str, shardings=None):
    """A parameter checkpoint (e.g. `WORKDIR/params_final`) restored onto this process's
    devices, whatever topology wrote it: `shardings` (a tree or one sharding), default the
    first local device."""
    path = os.path.abspath(path)
    with ocp.StandardCheckpointer() as ckptr:
        metadata = ckptr.metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)
        default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        if shardings is None or isinstance(shardings, jax.sharding.Sharding):
            one = shardings or default
            target = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), tree
            )
        else:
            target = jax.tree.map(
                lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), tree, shardings
            )
        return ckptr.restore(path, target)
