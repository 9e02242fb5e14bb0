"""Work items are typed and JSON-serialisable, and their keys cover exactly what changes an output."""

from __future__ import annotations

import json

import pytest

from loupe.jobs.build import make_plan
from loupe.jobs.build.config import parse_config
from loupe.jobs.build.plan import FieldsSpec, ReduceSpec, RenderSpec, ScanSpec, ScoreSpec, WorkItem
from tests.builds.build_helpers import tiny_config, write_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("items") / "images", count=6)


def plan(tmp_path, images, **scan) -> list[WorkItem]:
    config = tiny_config(str(tmp_path / "atlas"), str(images))
    config["render"]["diversity"] = {"enabled": True, "size": 32, "steps": 3, "units_per_item": 2, "images_per_unit": 2}
    config["scan"].update(scan)
    built = make_plan(parse_config(config), device="cpu")
    return [item for items in built.items.values() for item in items]


def test_every_item_round_trips_through_json_with_its_typed_spec(tmp_path, images):
    items = plan(tmp_path, images)
    assert {type(i.spec) for i in items} == {RenderSpec, FieldsSpec, ScanSpec, ReduceSpec, ScoreSpec}
    for item in items:
        again = WorkItem.from_json(json.loads(json.dumps(item.to_json())))
        assert again == item and again.spec == item.spec and again.stage == item.stage
    diversity = [i.spec for i in items if i.stage == "render" and i.spec.kind == "diversity"]
    assert diversity and all(s.images_per_unit == 2 and s.units_per_item == 2 for s in diversity)


def test_how_a_scan_runs_is_not_keyed_but_what_it_computes_is(tmp_path, images):
    base = {i.key for i in plan(tmp_path / "a", images)}
    assert {i.key for i in plan(tmp_path / "b", images, images_per_batch=2, decode_workers=1)} == base
    changed = {i.key for i in plan(tmp_path / "c", images, k=2)}
    assert {k for k in changed if k.startswith("scan-")}.isdisjoint(base)
    assert {k for k in changed if k.startswith("render-")} <= base
    on_device = {i.key for i in plan(tmp_path / "e", images, decode="device")}
    assert {k for k in on_device if k.startswith("scan-")}.isdisjoint(base), "device decoding changes the pixels"
    assert {k for k in on_device if k.startswith("render-")} <= base


def test_score_items_need_their_reduce_and_channel_renders(tmp_path, images):
    items = plan(tmp_path, images)
    by_key = {i.key: i for i in items}
    scores = [i for i in items if i.stage == "score"]
    assert sorted(s.spec.layer for s in scores) == ["layer1.0.bn1", "layer2"]
    for score in scores:
        inputs = [by_key[k].spec for k in score.spec.inputs()]
        assert isinstance(inputs[0], ReduceSpec) and inputs[0].layer == score.spec.layer
        assert all(isinstance(s, RenderSpec) and s.kind == "channel" and s.layer == score.spec.layer for s in inputs[1:])
        assert sorted(u for s in inputs[1:] for u in s.units) == [0, 1, 2, 3]
    changed = {i.key for i in plan(tmp_path / "d", images, k=2)}
    assert {s.key for s in scores}.isdisjoint(changed), "a new scan redoes the scores"


def test_receptive_fields_are_probed_by_a_work_item_once_never_by_the_driver(tmp_path, images, monkeypatch):
    from loupe.jobs.build import run_build
    from loupe.jobs.build.config import parse_config as parse
    from loupe.pipeline.scan import receptive_field

    probes: list[str] = []
    original = receptive_field.probe_receptive_fields

    def counted(model, layers, **kwargs):
        import traceback

        probes.append("".join(traceback.format_stack(limit=12)))
        return original(model, layers, **kwargs)

    monkeypatch.setattr(receptive_field, "probe_receptive_fields", counted)
    monkeypatch.setattr("loupe.pipeline.scan.probe_receptive_fields", counted)
    config = tiny_config(str(tmp_path / "atlas"), str(images))
    first = run_build(parse(config), executor="local", progress=False, log=lambda _: None)
    assert first.published and len(probes) == 1 and "_run_fields" in probes[0], "one probe, inside the fields item"
    items = [i for i in plan(tmp_path / "again", images) if i.stage == "fields"]
    assert len(items) == 1 and items[0].key not in make_plan(parse_config(config), device="cpu").all_keys(), \
        "the fields item belongs to no version"
    config["scan"]["k"] = 2  # new scan items: the saved fields are reused, nothing is probed again
    second = run_build(parse(config), executor="local", progress=False, log=lambda _: None)
    assert second.published and len(probes) == 1


def test_how_a_render_runs_is_not_keyed_but_its_precision_is(tmp_path, images):
    def render_keys(root, **channel) -> dict[tuple, str]:
        config = tiny_config(str(root / "atlas"), str(images))
        config["render"]["channel"].update(channel)
        built = make_plan(parse_config(config), device="cpu")
        return {(i.spec.layer, i.spec.kind, i.spec.units): i.key
                for items in built.items.values() for i in items if i.stage == "render"}

    base = render_keys(tmp_path / "a")
    spec = RenderSpec("layer2", "channel", (0, 1), 2, 32, 3, 0)
    assert set(spec.key_fields()) == {"layer", "kind", "units", "units_per_item", "size", "steps", "seed",
                                      "images_per_unit"}, "defaults leave existing atlases' keys as they were"
    assert render_keys(tmp_path / "b", compile="reduce-overhead") == base
    bf16 = render_keys(tmp_path / "c", precision="bf16")
    assert bf16.keys() == base.keys()
    assert all(bf16[k] != base[k] for k in base if k[1] == "channel")
    with pytest.raises(Exception, match=r"render\.channel\.compile"):
        parse_config({**tiny_config(str(tmp_path / "d"), str(images)),
                      "render": {"channel": {"compile": "fast"}}})
