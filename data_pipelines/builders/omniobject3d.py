"""OmniObject3D (Wu et al. 2023) from its download as it comes: one example per object.

The download (`odl get OpenXD-OmniObject3D-New/raw/raw_scans` and `.../raw/blender_renders`)
is one `<cat>.tar.gz` per category under `raw/raw_scans/` and `raw/blender_renders/`; the
dataset's `batch_untar.sh FOLDER` unpacks each into a folder of its name beside it. Each object
is `raw_scans/<cat>/<obj>/Scan/{Scan.obj, Scan.mtl, Scan.jpg}` (textured scan, +y up) and
`blender_renders/<cat>/<obj>/render/{images/r_<i>.png, transforms.json}` (100 views, 800 px).
`--manual_dir` may be the download root, its `raw/`, or a folder holding the unpacked
`raw_scans/` and `blender_renders/`. A category given only as a tarball is unpacked once into
the extract folder (default `<data_dir>/downloads/extracted/omniobject3d`); either nesting
(`<cat>/<obj>`, or `<cat>/<cat>/<obj>` when the tarball holds its folder) is read. Entries that
are not object folders (.DS_Store, the tarballs, a README) are ignored, not counted.

The input image is one render (`Spec.input_view`); the K-view grid tiles the K renders nearest
generation's camera ring (`data_pipelines.grid_views`), each with its camera. Cameras move from
Blender's world (imported, scaled scan) to the scan's unit-cube frame, the same frame as Pix3D's
models. Colours are sampled from the scan texture; a scan whose texture does not load and a
render without alpha are counted per shape in the report.
"""

from __future__ import annotations

import os
import tarfile

import tensorflow_datasets as tfds

from data_pipelines.builders.base import PreparedBuilder, PrepareError, camera_features
from data_pipelines.examples import prepare_omniobject3d

SOURCES = ("raw_scans", "blender_renders")
TARBALL = ".tar.gz"


def find_root(manual_dir: str) -> str:
    """The folder holding raw_scans/ (unpacked or as tarballs): manual_dir, or its raw/."""
    for root in (manual_dir, os.path.join(manual_dir, "raw")):
        if os.path.isdir(os.path.join(root, "raw_scans")):
            return root
    raise PrepareError(
        f"{manual_dir}: no raw_scans/ in it or in its raw/: pass the OmniObject3D download root "
        "(holding raw/), its raw/, or the folder holding the unpacked raw_scans/ and "
        "blender_renders/"
    )


def _hidden(name: str) -> bool:
    return name.startswith((".", "__MACOSX"))


def _is_object(path: str) -> bool:
    return any(os.path.isdir(os.path.join(path, sub)) for sub in ("Scan", "render"))


def _unnest(folder: str, category: str) -> str:
    """`<cat>/<cat>/<obj>` (batch_untar.sh of a tarball that holds its folder) -> `<cat>/<cat>`."""
    inner = os.path.join(folder, category)
    return inner if os.path.isdir(inner) and not _is_object(inner) else folder


def category_sources(source_dir: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """({category: folder} unpacked, {category: tarball} not unpacked, names ignored) of one of
    raw_scans/ or blender_renders/; a tarball beside its unpacked folder is that folder's."""
    folders, tarballs, ignored = {}, {}, []
    names = sorted(os.listdir(source_dir)) if os.path.isdir(source_dir) else []
    for name in names:
        path = os.path.join(source_dir, name)
        if os.path.isdir(path) and not _hidden(name):
            folders[name] = path
    for name in names:
        path = os.path.join(source_dir, name)
        if name in folders:
            continue
        if name.endswith(TARBALL) and os.path.isfile(path) and not _hidden(name):
            if name[: -len(TARBALL)] not in folders:
                tarballs[name[: -len(TARBALL)]] = path
        else:
            ignored.append(os.path.join(source_dir, name))
    return folders, tarballs, ignored


def extract(job: tuple[str, str]) -> str:
    """(tarball, destination) -> destination, unpacked once (a finished folder is reused;
    members may not leave it: tarfile's "data" filter)."""
    tarball, dest = job
    if not os.path.isdir(dest):
        partial = f"{dest}.partial{os.getpid()}"
        try:
            with tarfile.open(tarball) as tar:
                tar.extractall(partial, filter="data")
        except (OSError, tarfile.TarError) as e:
            raise PrepareError(f"{tarball}: cannot unpack ({type(e).__name__}: {e})") from e
        os.replace(partial, dest)
    return dest


class Omniobject3d(PreparedBuilder):
    """Input render, mask, camera, caption, K-view grid with cameras and shape samples."""

    name = "omniobject3d"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Grid views: the renders nearest the generation ring (--view_selection=ring), "
        "not frames 1, 25, 50, 75; the download as it comes (tarballs, strays).",
    }
    example_job = staticmethod(prepare_omniobject3d)
    textured = True
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Sign up at https://opendatalab.com/OpenXD-OmniObject3D-New/download, `pip install "
        "opendatalab`, `odl login`, then `odl get OpenXD-OmniObject3D-New/raw/raw_scans` and "
        "`odl get OpenXD-OmniObject3D-New/raw/blender_renders` (one <category>.tar.gz each). "
        "Pass the download root (OpenXD-OmniObject3D-New, holding raw/) as --manual_dir, as it "
        "is: the tarballs are unpacked into --extract_dir on first use, and categories already "
        "unpacked with the dataset's batch_untar.sh (either nesting) are read in place."
    )

    def __init__(self, *, extract_dir: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.extract_dir = extract_dir

    def extra_features(self) -> dict:
        spec = self.builder_config.spec
        k = spec.grid_rows * spec.grid_cols
        return {
            "views": tfds.features.Image(
                shape=(spec.image_size, spec.image_size, 3), encoding_format="png"
            ),  # fmt: skip
            "view_cameras": camera_features((k,)),
        }

    def _split_generators(self, dl_manager):
        default = os.path.join(os.fspath(dl_manager.download_dir), "extracted", self.name)
        self._extract_to = self.extract_dir or default
        return super()._split_generators(dl_manager)

    def categories(self, root: str) -> dict[str, dict[str, str]]:
        """{source: {category: folder of its objects}}, unpacking tarballs as needed."""
        out, jobs, ignored = {}, [], []
        for source in SOURCES:
            folders, tarballs, skipped = category_sources(os.path.join(root, source))
            out[source], ignored = folders, ignored + skipped
            for cat, tarball in tarballs.items():
                jobs.append((tarball, os.path.join(self._extract_to, source, cat)))
        if jobs:
            for source in SOURCES:
                os.makedirs(os.path.join(self._extract_to, source), exist_ok=True)
            self.log(f"unpacking {len(jobs)} category tarballs into {self._extract_to}")
            for dest in self._map(extract, jobs, "unpacking"):  # .../<source>/<cat>
                out[os.path.basename(os.path.dirname(dest))][os.path.basename(dest)] = dest
        if ignored:
            self.log(f"ignored {len(ignored)} entries that are not categories: "
                     + ", ".join(sorted(ignored)[:5]) + ("..." * (len(ignored) > 5)))  # fmt: skip
        return {source: {cat: _unnest(path, cat) for cat, path in cats.items()}
                for source, cats in out.items()}  # fmt: skip

    def index(self, root: str):
        cats = self.categories(find_root(root))
        items, shapes, ignored = [], {}, 0
        for category, scans in sorted(cats["raw_scans"].items()):
            renders = cats["blender_renders"].get(category, os.path.join(root, "no renders"))
            for obj in sorted(os.listdir(scans)):
                if _hidden(obj) or not os.path.isdir(os.path.join(scans, obj)):
                    ignored += 1  # .DS_Store, a README, a stray tarball: not an object
                    continue
                key = f"{category}/{obj}"
                shapes[key] = os.path.join(scans, obj, "Scan", "Scan.obj")
                items.append({"key": key, "shape_id": key, "category": category,
                              "render_dir": os.path.join(renders, obj, "render")})  # fmt: skip
        if ignored:
            self.log(f"ignored {ignored} entries in category folders that are not objects")
        return items, shapes
