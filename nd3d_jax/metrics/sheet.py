"""What people look at after an evaluation: the contact sheet and the markdown table."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

CELL = 96  # px per view in the contact sheet
LABEL = 14  # px of the label line above each row
GAP = 8  # px between the ground-truth and generated strips


def _strip(views: np.ndarray, cell: int) -> np.ndarray:
    tiles = [np.asarray(Image.fromarray(v).resize((cell, cell), Image.BILINEAR)) for v in views]
    return np.concatenate(tiles, axis=1)


def contact_sheet(rows: list[tuple[str, np.ndarray, np.ndarray]], path: str,
                  cell: int = CELL) -> np.ndarray:  # fmt: skip
    """One row per object: a label line, then its ground-truth views | its generated views
    ((K, H, W, 3) uint8 each). Written as PNG to `path`; returns the image."""
    if not rows:
        raise ValueError("contact_sheet: no rows")
    k = len(rows[0][1])
    width = 2 * k * cell + GAP
    sheet = np.full((len(rows) * (cell + LABEL), width, 3), 255, np.uint8)
    for i, (_, gt, gen) in enumerate(rows):
        y = i * (cell + LABEL) + LABEL
        sheet[y : y + cell, : k * cell] = _strip(gt, cell)
        sheet[y : y + cell, k * cell + GAP :] = _strip(gen, cell)
    image = Image.fromarray(sheet)
    draw = ImageDraw.Draw(image)
    for i, (label, _, _) in enumerate(rows):
        y = i * (cell + LABEL)
        draw.text((2, y + 1), f"{label}: ground truth", fill=(0, 0, 0))
        draw.text((k * cell + GAP + 2, y + 1), "generated", fill=(0, 0, 0))
    image.save(path)
    return np.asarray(image)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    """The evaluation as markdown: the means and set metrics, what was unavailable, and every
    object's numbers."""
    from nd3d_jax.metrics.suite import LOWER_IS_BETTER

    lines = [f"# Evaluation: {report['dataset']} {report['split']} ({report['objects']} objects)",
             "", f"Generated: `{report['generated']}`; coarse shapes: {report['coarse']}; "
             f"{report['views']['count']} views of {report['views']['size']} px.", "",
             "| metric | value | better |", "|---|---|---|"]  # fmt: skip
    for name, value in report["mean"].items():
        better = "lower" if name in LOWER_IS_BETTER else "higher"
        lines.append(f"| {name} | {_fmt(value)} | {better} |")
    if report.get("mean_fidelity"):
        fid = report["mean_fidelity"]
        lines += ["", "Refined vs coarse (unit frame) and texture coverage, means: " + ", ".join(
            f"{k} {_fmt(v)}" for k, v in fid.items())]  # fmt: skip
    if report["unavailable"]:
        lines += ["", "Unavailable:"]
        lines += [f"- {name}: {why}" for name, why in sorted(report["unavailable"].items())]
    if report.get("missing"):
        lines += ["", f"Not generated ({len(report['missing'])}): {', '.join(report['missing'])}"]
    rows = report["per_object"]
    names = [k for k in rows[0] if k not in ("name", "caption", "fidelity")] if rows else []
    lines += ["", "| object | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in rows:
        lines.append(f"| {r['name']} | " + " | ".join(_fmt(r.get(n, "")) for n in names) + " |")
    return "\n".join(lines) + "\n"
