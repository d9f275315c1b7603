"""docs/loop.svg, the README's picture, is what tools/loop_diagram.py draws, and it is an SVG
that names every part of the loop."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from tools import loop_diagram

SVG = "{http://www.w3.org/2000/svg}"


def test_the_committed_picture_is_what_the_script_draws() -> None:
    assert loop_diagram.SVG_FILE.read_text(encoding="utf-8") == loop_diagram.render(), (
        "docs/loop.svg is stale: run `python -m tools.loop_diagram`")
    assert loop_diagram.main(["--check"]) == 0


def test_the_picture_is_well_formed_and_names_every_part() -> None:
    root = ET.fromstring(loop_diagram.render())
    assert root.tag == f"{SVG}svg"
    texts = {"".join(node.itertext()) for node in root.iter(f"{SVG}text")}
    for part in ("patrol exporter", "Prometheus", "Alertmanager", "patrol worker", "Azure DevOps",
                 "Key Vault", "Kubernetes Secrets", "KEDA ScaledJob", "build agents"):
        assert part in texts, part
    # Every arrow head it uses is defined.
    markers = {m.get("id") for m in root.iter(f"{SVG}marker")}
    used = {p.get("marker-end")[len("url(#"):-1] for p in root.iter(f"{SVG}path") if p.get("marker-end")}
    assert used and used <= markers


def test_boxes_stay_inside_the_picture_and_do_not_overlap() -> None:
    boxes = loop_diagram.BOXES
    for box in boxes:
        assert box.x >= 0 and box.x + loop_diagram.BOX_W <= loop_diagram.WIDTH, box.key
        assert box.y >= 0 and box.bottom <= loop_diagram.HEIGHT, box.key
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = (a.x + loop_diagram.BOX_W <= b.x or b.x + loop_diagram.BOX_W <= a.x
                     or a.bottom <= b.y or b.bottom <= a.y)
            assert apart, (a.key, b.key)
