"""The main-loop instruction streams of the shipped kernels, stored as package data.

One JSON file per compiled variant and arch in `sim/core/streams/`, named like its cubin
(`tvw-128x128x64s3w4-sm_90.json`, `bw-128x128x32s3w4-b32-sm_80.json`): the K loop of the
real kernel, read from its SASS by `tvwsim.kernels.sass_stream`. They are derived data,
committed so that the core model runs without a CUDA toolkit; regenerate them after a
kernel source or nvcc changes with

    python -m tvwsim.sim.core.streams [--build-dir DIR] [--check]

(`--check` compares instead of writing and exits 1 on a difference). A file holds:

    {"schema": 1, "pattern": "dense", "config": "128x128x32s3w4", "block": 0,
     "arch": "sm_90", "function": "dense_gemm", "nvcc": "<nvcc --version, last line>",
     "instructions": [[opcode, class, [dst registers], [src registers], smem bytes], ...]}

The kernels exist for sm_80 and sm_90 (`tvwsim.kernels.build.ARCHS`); a GPU of another
sm_8x runs the sm_80 code (same instruction set), an sm_90a one the sm_90 code, and a
Volta GPU (sm_70, sm_72) the sm_80 loop rewritten with Volta's instructions
(`tvwsim.sim.core.volta`: no kernel of ours compiles for it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from tvwsim.kernels.sass_stream import SassInstruction

from tvwsim.config import KernelConfig
from tvwsim.errors import InputError
from tvwsim.manifest import arch_version
from tvwsim.pattern_spec import mma_kind

SCHEMA = 1
STREAM_ARCHS: tuple[str, ...] = ("sm_80", "sm_90")
"""Archs with stored streams: the archs the kernels are built for."""


@dataclass(frozen=True)
class Stream:
    """The main loop of one compiled kernel variant, one iteration = one K stage."""

    pattern: str
    config: KernelConfig
    block: int
    """bw block side (0 for other patterns)."""
    arch: str
    function: str
    nvcc: str
    instructions: tuple[SassInstruction, ...]

    @property
    def name(self) -> str:
        block = f"-b{self.block}" if self.block else ""
        return f"{self.pattern}-{self.config.name}{block}-{self.arch}"

    def count(self, *classes: str) -> int:
        """Instructions of these classes in one iteration."""
        return sum(1 for i in self.instructions if i.cls in classes)

    def to_json_text(self) -> str:
        head = {
            "schema": SCHEMA,
            "pattern": self.pattern,
            "config": self.config.name,
            "block": self.block,
            "arch": self.arch,
            "function": self.function,
            "nvcc": self.nvcc,
        }
        rows = ",\n".join("  " + json.dumps(i.to_json()) for i in self.instructions)
        return json.dumps(head)[:-1] + ', "instructions": [\n' + rows + "\n]}\n"

    @classmethod
    def from_json_text(cls, text: str, where: str = "stream") -> Stream:
        data = json.loads(text)
        if data.get("schema") != SCHEMA:
            raise InputError(where, f"schema {data.get('schema')!r}, expected {SCHEMA}")
        pattern = data["pattern"]
        return cls(
            pattern=pattern,
            config=KernelConfig.from_name(data["config"], mma=mma_kind(pattern)),
            block=int(data["block"]),
            arch=data["arch"],
            function=data["function"],
            nvcc=data["nvcc"],
            instructions=tuple(SassInstruction.from_json(r) for r in data["instructions"]),
        )


def is_volta(arch: str) -> bool:
    """sm_70 / sm_72: the GPUs whose loops `tvwsim.sim.core.volta` translates."""
    major, minor = arch_version(arch)
    return major == 7 and minor < 5


def stream_arch(arch: str, argument: str = "arch") -> str:
    """The stored arch whose code a GPU of `arch` runs: sm_8x -> sm_80, sm_90(a) -> sm_90,
    Volta -> sm_80 (translated by `load_stream`).

    InputError(`argument`) for an arch no loop of ours exists or is translated for
    (Turing, a hypothetical GPU without an arch)."""
    if not arch:
        raise InputError(
            argument,
            "this hardware names no arch; the core model reads a compiled kernel's code, "
            "so set arch (e.g. --set arch=sm_80)",
        )
    major, _minor = arch_version(arch)
    if is_volta(arch):
        return STREAM_ARCHS[0]
    for stored in STREAM_ARCHS:
        if arch_version(stored)[0] == major:
            return stored
    raise InputError(
        argument,
        f"{arch}: the kernels are compiled for {', '.join(STREAM_ARCHS)} only "
        "(cp.async and mma.sp need sm_80; Volta's loops are translated), so the core model "
        "has no code for it",
    )


def stream_dir() -> Path:
    """The package-data folder of the stored streams."""
    return Path(str(resources.files("tvwsim.sim.core") / "streams"))


def stream_file_name(pattern: str, config: KernelConfig, arch: str, block: int | None) -> str:
    suffix = f"-b{block}" if block else ""
    return f"{pattern}-{config.name}{suffix}-{arch}.json"


@lru_cache(maxsize=256)
def _load(path: str) -> Stream:
    return Stream.from_json_text(Path(path).read_text(encoding="utf-8"), where=Path(path).name)


def load_stream(
    pattern: str,
    config: KernelConfig,
    arch: str,
    block: int | None = None,
    *,
    arch_argument: str = "arch",
) -> Stream:
    """The stored stream of a shipped variant (on Volta its sm_80 loop translated); an
    InputError naming `--kernel` if none, or `arch_argument` when no kernel is compiled
    for the GPU's arch."""
    from tvwsim.kernels.build import BW_BLOCKS

    if pattern == "bw" and not block:
        block = BW_BLOCKS[0]
    gpu_arch, arch = arch, stream_arch(arch, arch_argument)
    path = stream_dir() / stream_file_name(pattern, config, arch, block)
    if not path.is_file():
        raise InputError(
            "--kernel",
            f"no stored stream for {pattern} {config.name}"
            f"{f' b{block}' if block else ''} on {arch}: only the shipped variants "
            "(tvwsim kernels list) have one",
        )
    if is_volta(gpu_arch):
        from tvwsim.sim.core.volta import volta_stream

        return volta_stream(_load(str(path)))
    return _load(str(path))


def stored_streams() -> list[Path]:
    return sorted(stream_dir().glob("*.json"))


# -- regeneration (needs nvcc and cuobjdump) ----------------------------------------------
def extract_streams(build_dir: Path, variants=None, archs=STREAM_ARCHS) -> list[Stream]:
    """Compile (or reuse from `build_dir`) the variants and read their loops."""
    from tvwsim.kernels import build as kbuild
    from tvwsim.kernels import sass_stream

    from tvwsim.manifest import MANIFEST_NAME, read_manifest

    variants = variants if variants is not None else kbuild.selected_variants()
    wanted = {
        (p, c.name, a, b or 0) for p, c in variants for a in archs for b in kbuild.variant_blocks(p)
    }
    have = {}
    if (build_dir / MANIFEST_NAME).exists():
        have = {
            k.key: k for k in read_manifest(build_dir).kernels if (build_dir / k.cubin).exists()
        }
    if not wanted <= set(have):
        manifest = kbuild.build(list(archs), build_dir, variants=variants, probe=False,
                                progress=None)  # fmt: skip
        have = {k.key: k for k in manifest.kernels}
    version = kbuild.nvcc_version()
    out = []
    for key in sorted(wanted):
        k = have[key]
        config = KernelConfig.from_name(k.config, mma=mma_kind(k.pattern))
        out.append(
            Stream(
                pattern=k.pattern,
                config=config,
                block=k.block,
                arch=k.arch,
                function=k.function,
                nvcc=version,
                instructions=tuple(sass_stream.extract(build_dir / k.cubin, k.function)),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate sim/core/streams/*.json.")
    parser.add_argument("--build-dir", type=Path, help="cubins to reuse (missing ones built)")
    parser.add_argument("--out", type=Path, help="folder to write (default: the package's)")
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    args = parser.parse_args(argv)
    out_dir = args.out or stream_dir()

    def run(build_dir: Path) -> int:
        streams = extract_streams(build_dir)
        differ = []
        for s in streams:
            path = out_dir / f"{s.name}.json"
            text = s.to_json_text()
            if args.check:
                if not path.is_file() or path.read_text(encoding="utf-8") != text:
                    differ.append(path.name)
            else:
                out_dir.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        if args.check and differ:
            print("differ from a fresh extraction: " + ", ".join(differ))
            return 1
        print(f"{len(streams)} streams {'match' if args.check else 'written to ' + str(out_dir)}")
        return 0

    if args.build_dir:
        args.build_dir.mkdir(parents=True, exist_ok=True)
        return run(args.build_dir)
    with tempfile.TemporaryDirectory(prefix="core-streams-") as tmp:
        return run(Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
