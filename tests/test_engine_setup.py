"""How engines are built and started for GPUs: build flags, device probing, -ngl argv."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from offgrid.config import load_settings
from offgrid.engine import build
from offgrid.engine.build import EngineBinary, plan_build
from offgrid.engine.plan import engine_options, plan_placement, scheduler_policy
from offgrid.engine.process import EngineOptions, build_argv, engine_env
from offgrid.errors import EngineUnavailableError
from offgrid.models.registry import ModelInfo
from offgrid.placement import Memory
from offgrid.resources import Gpu


def test_the_cpu_build_key_is_unchanged_so_cached_engines_stay_valid(tmp_path: Path) -> None:
    assert plan_build(tmp_path, "cpu").folder.name == "cpu-5dac99c27940639a"


def test_cuda_builds_kernels_for_the_gpus_that_are_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = [Gpu(0, "A", 1, 1, "9.0"), Gpu(1, "B", 1, 1, "8.6"), Gpu(2, "C", 1, 1, "9.0")]
    monkeypatch.setattr(build, "gpus", lambda: here)
    flags = plan_build(tmp_path, "cuda").flags
    assert "-DGGML_CUDA=ON" in flags
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in flags
    monkeypatch.setattr(build, "gpus", list)
    assert not any("ARCHITECTURES" in f for f in plan_build(tmp_path, "cuda").flags)


def fake_engine(tmp_path: Path, output: str) -> Path:
    path = tmp_path / "llama-server"
    path.write_text(f"#!/bin/sh\ncat <<'END'\n{output}\nEND\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize(
    ("output", "offloads"),
    [
        ("Available devices:\n  CUDA0: NVIDIA H100 80GB HBM3 (81559 MiB, 81000 MiB free)", True),
        ("Available devices:\n  Vulkan0: AMD Radeon (16368 MiB, 16000 MiB free)", True),
        ("Available devices:\n  (none)", False),
        ("Available devices:\n  BLAS: OpenBLAS (0 MiB, 0 MiB free)", False),
        ("load_backend: loaded CPU backend\nAvailable devices:\n", False),
    ],
)
def test_an_engine_of_unknown_make_is_asked_for_its_devices(
    tmp_path: Path, output: str, offloads: bool
) -> None:
    engine = EngineBinary(fake_engine(tmp_path, output), "unknown", "OFFGRID_LLAMA_SERVER")
    assert engine.offloads() is offloads
    assert EngineBinary(engine.path, "cuda", "cache").offloads()
    assert not EngineBinary(engine.path, "cpu", "cache").offloads()


def test_gpu_layers_reach_the_engine_only_when_set(tmp_path: Path) -> None:
    model = ModelInfo("m", tmp_path / "m.gguf", 1, 0.0, None)
    settings = load_settings({"HOME": str(tmp_path)})
    argv = build_argv(Path("llama-server"), model, engine_options(settings, "m"), 1)
    assert "--n-gpu-layers" not in argv  # default: placement decides, or the engine does
    settings = load_settings(
        {"HOME": str(tmp_path), "OFFGRID_MODEL_SETTINGS": '{"m": {"gpu_layers": 7}}'}
    )
    argv = build_argv(Path("llama-server"), model, engine_options(settings, "m"), 1)
    assert argv[argv.index("--n-gpu-layers") :][:4] == ["--n-gpu-layers", "7", "--fit", "off"]


def test_placement_follows_the_settings(tmp_path: Path) -> None:
    model = ModelInfo("m", tmp_path / "m.gguf", 2**30, 0.0, None)
    base = {"HOME": str(tmp_path)}
    roomy = Memory(2**40, 2**40)
    assert plan_placement(load_settings(base), True, model, roomy).gpu_layers == 2
    assert plan_placement(load_settings(base), False, model, roomy).gpu_layers == 0
    none = load_settings({**base, "OFFGRID_GPU_LAYERS": "0"})
    assert plan_placement(none, True, model, roomy).gpu_layers == 0
    limited = load_settings({**base, "OFFGRID_GPU_MEMORY": "12GiB"})
    assert scheduler_policy(limited).vram_limit == 12 * 2**30
    with pytest.raises(Exception, match="not a size"):
        load_settings({**base, "OFFGRID_GPU_MEMORY": "lots"})


def test_an_engine_with_no_gpu_layers_sees_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA engine at -ngl 0 still took 518-812 MiB of VRAM on an H200 (context, prompt
    batches); hidden from the GPU it took none (docs/decisions.md)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    env = engine_env(EngineOptions(gpu_layers=0))
    assert env["CUDA_VISIBLE_DEVICES"] == "" == env["HIP_VISIBLE_DEVICES"]
    assert "CUDA_VISIBLE_DEVICES" not in engine_env(EngineOptions(gpu_layers=5))
    assert "CUDA_VISIBLE_DEVICES" not in engine_env(EngineOptions())  # the engine decides


def test_an_engine_gets_its_secret_and_not_the_servers_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 15: the engine's key travels in its environment (not argv, which ps shows);
    systemd's notify socket and the CLI's key stay with the server."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "OFFGRID_API_KEY"):
        monkeypatch.setenv(name, "x")
    env = engine_env(EngineOptions(), "s3cret")
    assert env["LLAMA_API_KEY"] == "s3cret"
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "OFFGRID_API_KEY"} & set(env)
    model = ModelInfo("m", Path("m.gguf"), 1, 0.0, None)
    argv = build_argv(Path("llama-server"), model, EngineOptions(), 1)
    assert "s3cret" not in " ".join(argv) and "--api-key" not in argv


def test_a_gpu_build_is_found_while_the_gpus_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service that starts before the NVIDIA driver answers still gets its CUDA engine
    (the build's key names the GPU architectures, which NVML cannot tell yet)."""
    built = tmp_path / "engine" / "cuda-0123456789abcdef"
    (built / "bin").mkdir(parents=True)
    (built / "bin" / "llama-server").write_text("")
    (built / "ENGINE.json").write_text(json.dumps({"source": {"sha256": build.SOURCE.sha256}}))
    monkeypatch.setattr(build, "detect_backend", lambda: "cuda")
    monkeypatch.setattr(build, "gpus", list)
    settings = load_settings({"HOME": str(tmp_path), "OFFGRID_CACHE_DIR": str(tmp_path)})
    engine = build.find_engine(settings)
    assert (engine.backend, engine.path) == ("cuda", built / "bin" / "llama-server")
    (built / "ENGINE.json").write_text(json.dumps({"source": {"sha256": "other"}}))
    with pytest.raises(EngineUnavailableError):  # other sources: not this engine
        build.find_engine(settings)


@pytest.mark.parametrize("has_filter", [True, False])
def test_engine_sources_unpack_safely_on_every_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, has_filter: bool
) -> None:
    """Debian 12's python 3.11.2 has no tarfile.data_filter (3.11.4 added it): unpacking
    must refuse an entry that climbs out of the folder there too."""
    import io
    import tarfile

    from offgrid.engine.build import _extract
    from offgrid.errors import SetupError

    if not has_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(name: str, names: list[str]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member in names:
                info = tarfile.TarInfo(member)
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
        return path

    good = archive("good.tar.gz", ["top/vendor/a.txt", "top/other.txt"])
    out = _extract(good, tmp_path / "good", "vendor")
    assert (out / "a.txt").read_text() == "ok" and not (tmp_path / "good/top/other.txt").exists()
    bad = archive("bad.tar.gz", ["top/vendor/a.txt", "top/vendor/../../../evil.txt"])
    with pytest.raises((SetupError, tarfile.FilterError)):
        _extract(bad, tmp_path / "bad", "vendor")
    assert not (tmp_path / "evil.txt").exists()
