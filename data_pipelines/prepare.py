"""`python -m data_pipelines.prepare --dataset=pix3d|omniobject3d --manual_dir=DIR --data_dir=DIR`

Prepares a manual download as a tfds data set in ArrayRecord files under --data_dir, using all
cores, and prints how many examples were written and how many were skipped, by reason, and per
shape what was repaired or looked wrong (also saved as prepare_report.json beside the data).
--strict stops at the first bad example. With --beam_runner (and --beam_options) the examples
are made by an Apache Beam pipeline instead (tfds's Beam support): the same command runs on
Dataflow, Flink or Spark, or locally (DirectRunner) with several workers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from nd3d_jax.errors import UserError

BUILDERS = ("pix3d", "omniobject3d")
CONFIG_NAMES = ("default", "tiny")  # the builders' configs (builders/base.py CONFIGS)


def builder_class(dataset: str):
    if dataset == "pix3d":
        from data_pipelines.builders.pix3d import Pix3d

        return Pix3d
    if dataset == "omniobject3d":
        from data_pipelines.builders.omniobject3d import Omniobject3d

        return Omniobject3d
    raise UserError(f"unknown dataset {dataset!r}; use one of {BUILDERS}")


def beam_pipeline_options(beam_options):
    """`--beam_options` ("--flag=value ...", or a list of flags) as Beam PipelineOptions."""
    try:
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as e:
        raise UserError(
            f"--beam_runner/--beam_options need apache-beam: pip install -e '.[beam]' ({e})"
        ) from e
    try:
        flags = shlex.split(beam_options) if isinstance(beam_options, str) else list(beam_options)
    except ValueError as e:  # an unbalanced quote
        raise UserError(f"--beam_options={beam_options!r}: {e}") from e
    return PipelineOptions(flags)


def prepare(dataset: str, manual_dir: str, data_dir: str, *, config: str = "default",
            overwrite: bool = False, beam_runner: str | None = None,
            beam_options: str | list[str] | None = None, **options) -> dict:  # fmt: skip
    """Builds the data set and returns the report {written, skipped, data_dir, ...}; with
    `beam_runner` or `beam_options`, through an Apache Beam pipeline."""
    import tensorflow_datasets as tfds
    from etils import epath

    from data_pipelines.builders.base import PrepareError
    from data_pipelines.loader import silence_variant_probe

    if not os.path.isdir(manual_dir):
        raise PrepareError(f"--manual_dir {manual_dir} does not exist")
    beam = beam_runner is not None or beam_options is not None
    pipeline_options = beam_pipeline_options(beam_options or []) if beam else None
    silence_variant_probe()  # tfds warns that the folder it is about to write is not there yet
    builder = builder_class(dataset)(data_dir=data_dir, config=config,
                                     file_format="array_record", **options)  # fmt: skip
    mode = tfds.download.GenerateMode
    done = builder.is_prepared() and not overwrite
    held = _held_views(builder) if done else {}
    for key, value in held.items():  # what the prepared data holds, not what the flags say
        if options.get(key) is not None and options[key] != value:
            raise UserError(f"{builder.data_dir} was prepared with --{key}={value}: add "
                            f"--overwrite to rebuild it with --{key}={options[key]}")  # fmt: skip
    tfds.display_progress_bar(False)  # the builder shows its own progress
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=manual_dir,
            download_mode=mode.FORCE_REDOWNLOAD if overwrite else mode.REUSE_DATASET_IF_EXISTS,
            beam_runner=beam_runner, beam_options=pipeline_options,
        ))  # fmt: skip
    except Exception as e:
        error = _worker_error(e) if beam else e
        if error is e:
            raise
        raise error from e
    finally:
        tfds.display_progress_bar(True)
    splits = {name: info.num_examples for name, info in builder.info.splits.items()}
    report = {"dataset": dataset, "config": config, "data_dir": os.fspath(builder.data_dir),
              "already_prepared": done, "written": splits,
              "skipped": dict(sorted(builder.skipped.items())),
              "shapes": dict(sorted(builder.shapes.items())),
              "view_selection": builder.spec.view_selection, "view_seed": builder.spec.view_seed,
              "runner": (beam_runner or "beam") if beam else "process pool"}  # fmt: skip
    report.update(held)
    if not done:  # epath: --data_dir may be a bucket (gs://...) on a cluster
        report_path = epath.Path(builder.data_dir) / "prepare_report.json"
        report_path.write_text(json.dumps(report, indent=2))
    return report


def _held_views(builder) -> dict:
    """The grid-view choice a prepared data set was written with (its prepare_report.json)."""
    from etils import epath

    try:
        old = json.loads((epath.Path(builder.data_dir) / "prepare_report.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: old[k] for k in ("view_selection", "view_seed") if k in old}


def _worker_error(error: Exception) -> Exception:
    """A Beam worker's PrepareError (strict), which the runner wraps, as that error again."""
    from data_pipelines.builders.base import PrepareError

    text = str(error)
    marker = "PrepareError: "
    if isinstance(error, PrepareError) or marker not in text:
        return error
    return PrepareError(text.split(marker, 1)[1].splitlines()[0].strip(" '\""))


def summary(report: dict) -> str:
    written = sum(report["written"].values())
    splits = ", ".join(f"{k} {v}" for k, v in sorted(report["written"].items()))
    skipped = sum(report["skipped"].values())
    reasons = "".join(f"\n  {k}: {v}" for k, v in report["skipped"].items())
    head = "already prepared (use --overwrite to rebuild): " if report["already_prepared"] else ""
    text = (f"{head}wrote {written} examples ({splits}) to {report['data_dir']}\n"
            f"skipped {skipped} examples{':' if skipped else ''}{reasons}")  # fmt: skip
    shapes = dict(report.get("shapes", {}))
    if shapes:
        text += f"\nshapes prepared: {shapes.pop('prepared', 0)}"
        text += "".join(f"\n  {k}: {v}" for k, v in shapes.items())
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipelines.prepare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, choices=BUILDERS)
    parser.add_argument(
        "--manual_dir",
        required=True,
        help="the manual download as it comes (OmniObject3D: the root holding raw/)",
    )
    parser.add_argument("--data_dir", required=True, help="where the tfds data set is written")
    parser.add_argument("--config", default="default", choices=CONFIG_NAMES)
    parser.add_argument("--strict", action="store_true", help="stop at the first bad example")
    parser.add_argument(
        "--num_workers", type=int, default=None, metavar="N", help="default: all cores"
    )
    parser.add_argument(
        "--split_file",
        metavar="FILE",
        default=None,
        help='JSON {"train": [...], "test": [...]} of example keys or shape ids',
    )
    parser.add_argument(
        "--test_fraction",
        metavar="F",
        type=float,
        default=0.1,
        help="share of shapes held out for test when there is no split file",
    )
    parser.add_argument(
        "--caption_template", default=None, metavar="TEXT", help="default 'a photo of a {category}'"
    )
    parser.add_argument("--overwrite", action="store_true", help="rebuild an existing data set")
    parser.add_argument(
        "--keep_implausible",
        action="store_true",
        help="keep (with a warning) shapes whose near-surface SDF queries are under 5%% or over "
        "95%% inside, instead of skipping them",
    )
    parser.add_argument(
        "--view_selection",
        default=None,
        choices=("ring", "frames"),
        help="OmniObject3D grid views: nearest the generation ring (default), or by frame",
    )
    parser.add_argument(
        "--view_seed",
        metavar="N",
        type=int,
        default=None,
        help="OmniObject3D ring views: seed of the per-object azimuth offset (default 0)",
    )
    parser.add_argument(
        "--extract_dir",
        metavar="DIR",
        default=None,
        help="OmniObject3D tarballs unpack here (DATA_DIR/downloads/extracted/omniobject3d)",
    )
    parser.add_argument(
        "--beam_runner",
        metavar="RUNNER",
        default=None,
        help="an Apache Beam pipeline on DirectRunner, DataflowRunner, FlinkRunner, ...",
    )
    parser.add_argument(
        "--beam_options",
        metavar="FLAGS",
        default=None,
        help="Beam's flags, e.g. '--direct_num_workers=4 --direct_running_mode=multi_processing'",
    )
    args = parser.parse_args(argv)
    if args.extract_dir and args.dataset != "omniobject3d":
        parser.error("--extract_dir is for --dataset=omniobject3d (Pix3D comes unpacked)")
    options = {"extract_dir": args.extract_dir} if args.extract_dir else {}
    try:
        report = prepare(args.dataset, args.manual_dir, args.data_dir, config=args.config,
                         overwrite=args.overwrite, strict=args.strict,
                         num_workers=args.num_workers, split_file=args.split_file,
                         test_fraction=args.test_fraction,
                         caption_template=args.caption_template,
                         keep_implausible=args.keep_implausible,
                         view_selection=args.view_selection, view_seed=args.view_seed,
                         beam_runner=args.beam_runner,
                         beam_options=args.beam_options, **options)  # fmt: skip
    except UserError as e:  # PrepareError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
