"""benchmarks/maco.py --smoke runs and prints every figure: activations, their ratio and the slopes."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"-?\d+\.\d+"


@pytest.mark.slow  # about 20 s on two CPU cores: a ViT is trained and two models are rendered
def test_the_smoke_benchmark_prints_the_comparison():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "maco.py"), "--smoke"], capture_output=True,
                         text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "differ only in RenderSettings.param" in out
    rows = re.findall(rf"^(synthetic ViT|MobileNetV2)\s+(\S+)((?:\s+{NUMBER}){{7}})\s*$", out, re.M)
    models = {model for model, _, _ in rows}
    assert "synthetic ViT" in models, out
    shared = REPO.parent / "shared" / "datasets" / "imagenet-sample"
    assert ("MobileNetV2" in models) or ("MobileNetV2 skipped" in out and not shared.is_dir()), out
    for _, _, figures in rows:
        lucid, maco, ratio, *slopes, seconds = (float(v) for v in figures.split())
        assert ratio == pytest.approx(maco / lucid, abs=0.01)
        assert all(-5 < s < 0 for s in slopes), slopes
