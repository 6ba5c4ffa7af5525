"""The web page in headless Chromium (Debian's, driven by Playwright): upload a phantom, wait for
the job to succeed, and see a heart drawn in the 3D view."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from heartvec.phantom import make_phantom
from heartvec.reconstruction import defaults
from heartvec.reconstruction.options import ReconstructOptions
from heartvec_testing.services import Service
from heartvec_testing.volumes import REPO, write_nifti

pytestmark = pytest.mark.slow

WEB = REPO / "services" / "api" / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
         "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]  # fmt: skip


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Service]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (make test installs Debian's chromium as root)")
    if not (WEB / "node_modules" / "playwright-core").is_dir():
        pytest.skip("web dependencies not installed: run `make web`")
    service = Service(tmp_path / "service", {}, embedded=True)
    service.folder.mkdir()
    service.start_api()
    yield service
    service.stop()


def test_upload_in_the_browser_shows_a_rendered_heart(embedded: Service, tmp_path: Path) -> None:
    page = embedded.client.get("/")
    assert page.status_code == 200 and "heartvec" in page.text
    assert embedded.client.get("/static/app.js").status_code == 200
    labels, affine = make_phantom(3, size=72, spacing=2.8)
    volume = write_nifti(tmp_path / "upload.nii.gz", labels, affine)
    screenshot = tmp_path / "viewer.png"  # kept by pytest in its tmp folder for a look
    run = subprocess.run(
        ["node", "e2e/upload.mjs", str(embedded.client.base_url), str(volume), str(screenshot)],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=300,
        env={"CHROMIUM": CHROMIUM, "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert run.returncode == 0, run.stderr + run.stdout
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded", summary
    assert summary["viewer"] == "ready:10" and summary["classRows"] == 10
    assert summary["downloads"] >= 15 and summary["previewLoaded"]
    # the form's bounds and tables come from the API's schema, where the options define them
    low, high = ReconstructOptions.bounds("resolution")
    assert summary["options"]["resolution"] == [str(low), str(high)]
    assert summary["options"]["refine"] == [
        str(b) for b in ReconstructOptions.bounds("refine_steps")
    ]
    points = [str(b) for b in ReconstructOptions.bounds("refine_points")]
    assert summary["options"]["points"] == [*points, str(defaults.REFINE_POINTS)]
    frames = [str(b) for b in ReconstructOptions.bounds("frame_search")]
    assert summary["options"]["frames"] == [*frames, str(defaults.FRAME_SEARCH)]
    assert summary["options"]["labels"] == ["default", "mmwhs", "mmwhs-raw"]
    (job,) = embedded.client.get("/jobs").json()["items"]
    assert job["options"]["frame_search"] == 4  # the form's frames reach the job
    assert summary["frame"].startswith("frame search: centre moved [")  # and the page shows it
    assert summary["frame"].endswith(f"{job['metrics']['frame_search']['frames']} frames)")
    assert summary["problems"] == []

    pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.float64) / 255
    background = np.abs(pixels - to_rgb("#111111")).sum(axis=-1) < 0.05
    assert 0.05 < 1 - background.mean() < 0.9  # a heart fills part of the view
    hues = _dominant_class_colours(pixels[~background])
    assert len(hues) >= 5, hues  # several structures, each in its class colour


def _dominant_class_colours(pixels: np.ndarray) -> list[str]:
    """Class colours that are the nearest palette entry (by hue) of at least 0.5% of the drawn
    pixels; shading changes brightness, not hue."""
    from matplotlib.colors import rgb_to_hsv

    drawn = rgb_to_hsv(pixels)
    palette = rgb_to_hsv(np.array([to_rgb(c) for c in TAB10]))
    coloured = drawn[:, 1] > 0.25  # grey (class 8) and near-white highlights are not counted
    hue_gap = np.abs(drawn[coloured, None, 0] - palette[None, :, 0])
    nearest = np.argmin(np.minimum(hue_gap, 1 - hue_gap), axis=1)
    counts = np.bincount(nearest, minlength=10) / max(1, len(nearest))
    return [TAB10[i] for i in np.flatnonzero(counts > 0.005)]
