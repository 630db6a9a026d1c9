"""The Khronos glTF validator (npm `gltf-validator`) as a test helper: every GLB we write is
checked by it. `make test` installs it under `.tools/` (NODE_PATH); a missing install fails the
test with the command that installs it (it is never skipped)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "gltf_validate.js")
MODULES = os.environ.get("ND3D_NODE_MODULES", os.path.join(ROOT, ".tools", "node_modules"))
INSTALL = "npm install --prefix .tools --no-audit --no-fund gltf-validator@2.0.0-dev.3.10"


def validate_glb(*paths) -> list[dict]:
    """One report per file: {"path", "errors", "warnings", "messages"}; raises AssertionError
    when node or the validator is missing."""
    node = shutil.which("node")
    assert node, "node is not installed: the glTF validator needs Node.js"
    assert os.path.isdir(os.path.join(MODULES, "gltf-validator")), (
        f"gltf-validator is not installed under {MODULES}; run `{INSTALL}` (make test does)"
    )
    out = subprocess.run(
        [node, SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "NODE_PATH": MODULES},
        timeout=300,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def assert_valid_glb(*paths) -> None:
    for report in validate_glb(*paths):
        assert report["errors"] == 0 and report["warnings"] == 0, report
