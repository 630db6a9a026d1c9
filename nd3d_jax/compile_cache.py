"""Compile once per machine: the persistent XLA compilation cache of every command, and a
count of what each process really compiles.

Every config-driven command (`cli.run`) and `python -m nd3d_jax.benchmark` / `.prior`
call `setup` before anything compiles. The folder, first match wins:

1. `ND3D_COMPILATION_CACHE=DIR` or `=off` in the environment;
2. the config's top-level `compilation_cache` key (`--config.compilation_cache=DIR|off`; empty
   by default);
3. JAX's own `JAX_COMPILATION_CACHE_DIR`, kept as it is (the tests set theirs);
4. `$XDG_CACHE_HOME/nd3d_jax/xla` (default `~/.cache/nd3d_jax/xla`).

Every program is cached, however small or quick to compile (JAX's defaults skip programs under
1 s), unless `JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS` / `..._MIN_ENTRY_SIZE_BYTES` say
otherwise. In a folder chosen here the cache is bounded (`MAX_BYTES`, least recently used
entries go first; `JAX_COMPILATION_CACHE_MAX_SIZE` overrides), which also makes JAX read and
write every entry under a file lock (`DIR/.lockfile`): several processes may share the folder
and write at once. Without the bound JAX writes entries in place (no lock, no rename), and two
processes compiling the same program together can leave a torn entry. A multi-process run
writes from process 0 only and every process reads. A key covers the program, the JAX and XLA
versions, the XLA flags and the devices, so one folder serves several GPU kinds. See
docs/design.md for shared filesystems.

`CompileCounter` tells a real compile from a cache hit through `jax.monitoring`: JAX records
'/jax/compilation_cache/cache_hits' inside its backend-compile event when it loaded the
program from the cache instead.
"""

from __future__ import annotations

import os
import threading

import jax

from nd3d_jax.errors import UserError

ENV = "ND3D_COMPILATION_CACHE"
OFF = ("off", "none", "false", "0")
MAX_BYTES = 16 * 2**30  # 16 GiB: a paper-size GPU run's programs with room to spare
# jax.monitoring events (jax 0.10): trace, lower (a jit cache miss), backend compile or load
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "nd3d_jax", "xla")


def resolve(config_value: str = "") -> tuple[str | None, bool]:
    """(the cache folder or None for off, whether it was chosen here rather than by JAX)."""
    value = os.environ.get(ENV, "").strip() or str(config_value or "").strip()
    if value.lower() in OFF:
        return None, False
    if value:
        return os.path.abspath(os.path.expanduser(value)), True
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir, False
    return default_dir(), True


def setup(config_value: str = "") -> str | None:
    """Turns the persistent cache on (or off) for this process; returns its folder."""
    folder, ours = resolve(config_value)
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    if "://" not in folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"compilation cache {folder}: {e.strerror or e} (set {ENV}=DIR, or =off)"
            ) from e
        if not os.access(folder, os.W_OK):
            raise UserError(f"compilation cache {folder} is not writable (set {ENV}=DIR, or =off)")
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES" not in os.environ:
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # every entry
    # the bound (and with it the lock) only where every writer uses it: JAX's eviction needs the
    # access-time file that bounded writers keep beside each entry
    if ours and "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ:
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return folder


class CompileCounter:
    """What this process traced, lowered and compiled since the counter started (all threads):
    `lowered` counts jit cache misses; `compiled` the XLA compiles that the persistent cache did
    not answer (`cache_hits` did); seconds: `compile_s` in those compiles, `jit_s` in tracing,
    lowering, compiling and loading altogether."""

    def __init__(self):
        self.lowered = self.compiled = self.cache_hits = 0
        self.compile_s = self.jit_s = 0.0
        self.seconds = dict.fromkeys((TRACE_EVENT, LOWER_EVENT, BACKEND_EVENT), 0.0)
        self.compiled_names: list[str] = []  # the programs compiled (not loaded), in order
        self._lock = threading.Lock()
        self._hit = threading.local()  # the cache-hit event comes inside its compile event
        jax.monitoring.register_event_listener(self._on_event)
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)

    def _on_event(self, event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            self._hit.seen = True

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event not in (TRACE_EVENT, LOWER_EVENT, BACKEND_EVENT):
            return
        hit = event == BACKEND_EVENT and getattr(self._hit, "seen", False)
        self._hit.seen = False if event == BACKEND_EVENT else getattr(self._hit, "seen", False)
        with self._lock:
            self.jit_s += duration
            self.seconds[event] += duration
            if event == LOWER_EVENT:
                self.lowered += 1
            elif event == BACKEND_EVENT and hit:
                self.cache_hits += 1
            elif event == BACKEND_EVENT:
                self.compiled += 1
                self.compile_s += duration
                self.compiled_names.append(str(kwargs.get("fun_name", "?")))

    def summary(self) -> dict:
        with self._lock:
            return {"lowered": self.lowered, "compiled": self.compiled,
                    "cache_hits": self.cache_hits, "compile_s": round(self.compile_s, 3),
                    "jit_s": round(self.jit_s, 3),
                    **{f"{k.rpartition('/')[2].removesuffix('_duration')}_s": round(v, 3)
                       for k, v in self.seconds.items()},
                    "compiled_programs": self.compiled_names[:100]}  # fmt: skip

    def close(self) -> None:
        jax.monitoring.unregister_event_listener(self._on_event)
        jax.monitoring.unregister_event_duration_listener(self._on_duration)
