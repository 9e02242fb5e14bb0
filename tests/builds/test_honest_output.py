"""The build says what it does: renders and scans counted apart, progress in the right units."""

from __future__ import annotations

from loupe.jobs.build.progress import Progress
from loupe.jobs.cli import main
from tests.builds.build_helpers import save_config, tiny_config


def test_validate_only_counts_rendered_units_and_scanned_channels_apart(tmp_path, capsys):
    config = tiny_config(str(tmp_path / "atlas"), str(tmp_path / "images"))
    config["render"]["diversity"] = {"enabled": True, "size": 32, "steps": 3, "units_per_item": 2, "images_per_unit": 3}
    path = save_config(tmp_path / "c.yaml", config)
    assert main(["build", str(path), "--validate-only"]) == 0
    out = capsys.readouterr().out
    # units "0-3" limit renders to 4 units per layer (2 layers); the scan covers every channel
    # of both layers (resnet20: layer1.0.bn1 has 16, layer2 has 32).
    assert "1 model(s), 2 layer(s)" in out
    assert "renders 8 unit(s) in 3 kind(s) (channel 8, negative 8, diversity 8; 40 images)" in out
    assert f"scans all 48 unit(s) of those layers and bases over {tmp_path / 'images'}" in out
    assert not (tmp_path / "atlas").exists()


def test_progress_reports_each_kind_of_work_in_its_own_unit():
    bar = Progress(3, "demo", enabled=False)
    bar.advance("render", 8)
    bar.advance("scan", 100)
    bar.advance("reduce", 0)
    rates = bar.rates()
    assert "units/s" in rates and "images/s" in rates and rates.count("/s") == 2
    bar.close()
    only_scans = Progress(1, "scan only", enabled=False)
    only_scans.advance("scan", 50)
    assert "images/s" in only_scans.rates() and "units/s" not in only_scans.rates()
