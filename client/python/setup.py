"""Generates the roadie.v1 message and service modules from the .proto files
while the package is built, so the wheel carries them.

The .proto files are found in ``$ROADIE_PROTO_DIR``, else ``./proto`` (an
unpacked source distribution), else ``../../proto`` (this repository).
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PROTO_FILES = ["roadie/v1/cache.proto", "roadie/v1/jobs.proto", "roadie/v1/snapshots.proto"]


def proto_dir() -> Path:
    candidates = [HERE / "proto", HERE.parent.parent / "proto"]
    if os.environ.get("ROADIE_PROTO_DIR"):
        candidates.insert(0, Path(os.environ["ROADIE_PROTO_DIR"]))
    for candidate in candidates:
        if (candidate / PROTO_FILES[0]).is_file():
            return candidate
    raise SystemExit(
        "roadie .proto files not found (tried "
        + ", ".join(str(c) for c in candidates)
        + "): build from the Roadie repository or set ROADIE_PROTO_DIR"
    )


class BuildWithStubs(build_py):
    """build_py that first writes roadie/v1/*_pb2.py(i) into the build tree."""

    def run(self) -> None:
        from grpc_tools import protoc  # a build requirement (pyproject.toml)
        import importlib.resources

        out = Path(self.build_lib)
        out.mkdir(parents=True, exist_ok=True)
        well_known = importlib.resources.files("grpc_tools") / "_proto"
        args = [
            "protoc",
            f"-I{proto_dir()}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--pyi_out={out}",
            f"--grpc_python_out={out}",
            *PROTO_FILES,
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed on " + " ".join(PROTO_FILES))
        (out / "roadie" / "v1" / "__init__.py").write_text('"""Generated roadie.v1 messages and stubs."""\n')
        super().run()


setup(cmdclass={"build_py": BuildWithStubs})
