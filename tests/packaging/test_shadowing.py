"""The project venv (an editable install of this checkout) imports Loupe correctly from a folder
that holds its own `pipeline.py`, `storage.py` and `jobs.py`."""

from __future__ import annotations

from pathlib import Path

from tests.packaging.import_probe import SHADOWED_SCRIPT, run_script, write_shadows
from tests.packaging.wheel_helpers import REPO


def test_local_modules_named_pipeline_and_storage_do_not_shadow_loupe(tmp_path: Path) -> None:
    write_shadows(tmp_path)
    report = run_script(SHADOWED_SCRIPT, cwd=tmp_path)
    assert report["storage"] == str(REPO / "storage" / "__init__.py")
    assert report["models"] == str(REPO / "pipeline" / "models" / "__init__.py")
    assert report["cli"] == str(REPO / "jobs" / "cli" / "__init__.py")
    assert report["error"] == "atlas missing-atlas has no published version (no atlas.json)"
    assert report["shadows_imported"] == []


def test_the_shadowing_modules_really_break_the_old_import_roots(tmp_path: Path) -> None:
    """The fixture's modules do raise when imported by their bare names, so the test above is real."""
    write_shadows(tmp_path)
    report = run_script(
        "import json\nfailures = []\n"
        "for name in ('pipeline', 'storage', 'jobs'):\n"
        "    try:\n        __import__(name)\n"
        "    except ImportError as exc:\n        failures.append(str(exc))\n"
        "print(json.dumps(failures))\n",
        cwd=tmp_path,
    )
    assert [f.split()[2] for f in report] == ["pipeline.py", "storage.py", "jobs.py"]
