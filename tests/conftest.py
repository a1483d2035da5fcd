"""Shared test fixtures: where the real weights and media are, and a private cache per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.shared import shared_dir, shared_media, shared_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = shared_dir()
os.environ.setdefault("STREAMER_SHARED", str(SHARED))  # what `streamer bench` and the tools take their defaults from
WEIGHTS = shared_weights()
MEDIA = shared_media()
CLIP = MEDIA / "video" / "cutBunny.mp4"


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Style codes and engines go to a temporary cache, never the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    os.environ.pop("STREAMER_WEIGHTS_DIR", None)


@pytest.fixture(autouse=True, scope="session")
def _commands_imported() -> None:
    """Every command module imported before any test patches a fake into streamer.options: a module first
    imported under a patch would keep the fake (its ``from streamer.options import ...``) for the session."""
    from streamer.cli import build_parser

    build_parser()


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    if not (WEIGHTS / "microast").is_dir():
        pytest.skip(f"real weights not found at {WEIGHTS} (set STREAMER_SHARED)")
    return WEIGHTS


@pytest.fixture(scope="session")
def media() -> Path:
    if not (MEDIA / "content").is_dir():
        pytest.skip(f"real media not found at {MEDIA} (set STREAMER_SHARED)")
    return MEDIA


@pytest.fixture(scope="session")
def clip() -> Path:
    if not CLIP.exists():
        pytest.skip(f"real clip not found at {CLIP} (set STREAMER_SHARED)")
    return CLIP


@pytest.fixture(scope="session")
def microast(weights_dir: Path):
    from engines.models import load_model

    return load_model("microast", weights_dir, download=False)


@pytest.fixture(scope="session")
def adain_r31(weights_dir: Path):
    from engines.models import load_model

    return load_model("adain-r31", weights_dir, download=False)


def cli_runner(weights_dir: Path, capsys: pytest.CaptureFixture, *flags: str):
    """The CLI in-process with ``flags`` first and ``--weights-dir`` last: ``run(*argv) -> (exit code, stderr)``."""
    from streamer.cli import main

    def _run(*argv) -> tuple[int, str]:
        code = main([*flags, *map(str, argv), "--weights-dir", str(weights_dir)])
        return code, capsys.readouterr().err

    return _run


@pytest.fixture()
def run(weights_dir: Path, capsys):
    """The CLI in-process, quiet; (exit code, stderr)."""
    return cli_runner(weights_dir, capsys, "-q")


@pytest.fixture()
def no_model(monkeypatch):
    """Loading a model, building an engine or starting a benchmark fails the test: the error must have come before."""
    import streamer.bench
    import streamer.options

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    for module, name in ((streamer.options, "load_model"), (streamer.options, "create_engine"),
                         (streamer.bench, "load_bench_model"), (streamer.bench, "measure_peak_gflops")):
        monkeypatch.setattr(module, name, loaded)


@pytest.fixture()
def fake_model():
    """Commands use an InvertingStylizer (tests.fakes) instead of loading a network."""
    from tests.fakes import stand_in_model
    from tests.fakes import InvertingStylizer

    fake = InvertingStylizer()
    with stand_in_model(fake):
        yield fake
