"""The web demo (`nd3d_jax.app`) served in-process on a free loopback port with the tiny model
(`generate_fixtures.tiny_model`) and the tiny Shap-E image pipeline, for the app tests: one
server per test process (`shared_app`), warmed up at start-up, closed when the session ends."""

from __future__ import annotations

import os
import socket
import struct
import zlib

import pytest

from nd3d_jax.config_cli import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SERVER = pytest.StashKey[object]()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp_dir: str, model: str, shap_e_image: str, warmup: bool):
    """An `nd3d_jax.app.Server` for configs/generate.py:tiny on one device."""
    from nd3d_jax import app

    c = load_config(os.path.join(ROOT, "configs/generate.py:tiny"))
    c.params = model
    c.mesh.num_devices = 1
    c.prior.image_weights = shap_e_image
    c.output.turntable_frames = 0
    c.lock()
    return app.serve(c, host="127.0.0.1", port=free_port(), out=os.path.join(tmp_dir, "out"),
                     warmup=warmup, log=lambda m: print(f"[app] {m}"), quiet=True)  # fmt: skip


def shared_app(request):
    """The process's app server (started on first use; both app test files share it)."""
    stash = request.config.stash
    if _SERVER not in stash:
        tmp = str(request.getfixturevalue("tmp_path_factory").mktemp("app"))
        model = request.getfixturevalue("tiny_model")
        server = start_app(tmp, model, shap_e_image_folder(request), warmup=True)
        stash[_SERVER] = server
        request.config.add_cleanup(server.close)
    return stash[_SERVER]


def shap_e_image_folder(request) -> str:
    """The tiny Shap-E img2img pipeline's folder (its diffusers/transformers import needs
    torchvision importable beside the CPU torch: `torch_references`)."""
    from torch_references import import_torchvision

    import_torchvision()
    return request.getfixturevalue("tiny_shap_e")["image"][0]


def huge_png(path: str, width: int = 10000, height: int = 10000) -> str:
    """A PNG whose header declares `width` x `height` pixels (its data is a few bytes): what a
    too-large upload looks like to a decoder before it allocates."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))  # fmt: skip
    return path
