"""A preparation worker's bookkeeping (`Tally`), shared by the process pool (`base`) and the
Beam pipeline (`beam`), and the error that stops a strict run (`PrepareError`)."""

from __future__ import annotations

from collections.abc import Callable

from data_pipelines.examples import Spec, plausible_sign
from nd3d_jax.errors import UserError


class PrepareError(UserError):
    """A bad example under `strict=True`, or a manual folder that is not the data set."""


class Tally:
    """A worker's bookkeeping: examples skipped by reason (or, `strict`, the first one stops
    the run), shapes prepared and their warnings (implausible SDF signs skip the shape's
    examples unless `keep_implausible`), examples written by split; `count(kind, name, n)`
    stores them, `log` says them."""

    def __init__(self, spec: Spec, strict: bool, keep_implausible: bool,
                 log: Callable[[str], None], count: Callable[[str, str, int], None]):  # fmt: skip
        self.spec, self.strict, self.keep_implausible = spec, strict, keep_implausible
        self.log, self.count = log, count

    def skip(self, reason: str, path: str, detail: str = "", count: int = 1) -> None:
        message = f"{path}: {reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise PrepareError(message)
        self.count("skipped", reason, count)
        self.log(f"skipped {count} example{'s' * (count != 1)}: {message}")

    def warn(self, path: str, warnings) -> None:
        for warning in warnings:
            self.count("shapes", warning, 1)
        if warnings:
            self.log(f"warning: {path}: {'; '.join(warnings)}")

    def shape(self, result: tuple, count: int) -> dict | None:
        """A `prepare_shape` result -> the shape, or None (skipped, its `count` examples too)."""
        if result[0] != "ok":
            self.skip(*result[2:], count=count)
            return None
        shape = result[2]
        self.count("shapes", "prepared", 1)
        self.warn(shape["path"], shape.pop("warnings"))
        problem = plausible_sign(shape, self.spec)
        if problem is None:
            return shape
        if self.keep_implausible:
            self.count("shapes", "implausible inside fraction, kept", 1)
            self.log(f"warning: {shape['path']}: kept with {problem}")
            return shape
        self.count("shapes", "implausible inside fraction, skipped", 1)
        self.skip("implausible inside fraction", shape["path"], problem, count=count)
        return None

    def example(self, result: tuple, split: str) -> tuple[str, dict] | None:
        """An example job's result -> (key, example) to write, or None (skipped)."""
        if result[0] != "ok":
            self.skip(*result[2:])
            return None
        key, example = result[1], result[2]
        self.warn(key, example.pop("warnings", ()))  # per example = per shape (OmniObject3D)
        self.count("written", split, 1)
        return key, example
