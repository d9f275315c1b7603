"""Draws docs/loop.svg, the picture of patrol's loop in the README.

The picture is plain SVG written from the coordinates below, so it renders on GitHub, in any
browser and offline, and needs nothing beyond the standard library. Run it after changing the
picture and commit both files; tests/unit/test_loop_diagram.py fails while docs/loop.svg differs
from what this script writes.

    python -m tools.loop_diagram            # rewrite docs/loop.svg
    python -m tools.loop_diagram --check    # exit 1 if docs/loop.svg is stale
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

SVG_FILE = Path(__file__).resolve().parent.parent / "docs" / "loop.svg"

WIDTH, HEIGHT = 980, 470
BOX_W, BOX_H = 180, 64
TOP_Y, BOTTOM_Y = 40, 300
WRITE_BUS_Y, READ_BUS_Y = 190, 236
PATROL_FILL, WORLD_FILL, STACK_FILL = "#dbeafe", "#f1f5f9", "#fef3c7"
WRITE_COLOUR, READ_COLOUR, WORLD_COLOUR = "#b45309", "#1d4ed8", "#475569"


@dataclass(frozen=True)
class Box:
    """One part of the loop: a title and a line saying what it does there."""

    key: str
    x: int
    y: int
    title: str
    detail: str
    fill: str

    @property
    def centre_x(self) -> int:
        return self.x + BOX_W // 2

    @property
    def bottom(self) -> int:
        return self.y + BOX_H


BOXES = (
    Box("exporter", 20, TOP_Y, "patrol exporter", "expiry, validity, KEDA, pools", PATROL_FILL),
    Box("prometheus", 270, TOP_Y, "Prometheus", "shipped alert rules", STACK_FILL),
    Box("alertmanager", 520, TOP_Y, "Alertmanager", "routes remediation=rotate", STACK_FILL),
    Box("worker", 780, TOP_Y, "patrol worker", "rotation saga, journal", PATROL_FILL),
    Box("ado", 14, BOTTOM_Y, "Azure DevOps", "PAT Lifecycle API, pools", WORLD_FILL),
    Box("keyvault", 206, BOTTOM_Y, "Key Vault", "daily-checks PAT", WORLD_FILL),
    Box("secrets", 398, BOTTOM_Y, "Kubernetes Secrets", "KEDA's PAT, per cluster", WORLD_FILL),
    Box("keda", 590, BOTTOM_Y, "KEDA ScaledJob", "polls the pool's queue", WORLD_FILL),
    Box("agents", 782, BOTTOM_Y, "build agents", "one pod per queued job", WORLD_FILL),
)
BY_KEY = {box.key: box for box in BOXES}
WRITTEN = ("ado", "keyvault", "secrets", "keda")     # what the worker changes
READ = ("ado", "keyvault", "secrets", "keda")        # what the exporter looks at


def _text(x: float, y: float, words: str, *, size: int = 13, weight: str = "normal",
          colour: str = "#0f172a", anchor: str = "middle") -> str:
    # A white halo (stroke painted under the fill) keeps a label readable where a line crosses it.
    return (f'<text x="{x:g}" y="{y:g}" font-size="{size}" font-weight="{weight}" fill="{colour}" '
            f'text-anchor="{anchor}" stroke="#ffffff" stroke-width="4" paint-order="stroke" '
            f'stroke-linejoin="round">{escape(words)}</text>')


def _line(points: list[tuple[float, float]], colour: str, *, dashed: bool = False,
          arrow: bool = True) -> str:
    path = " ".join(f"{'M' if i == 0 else 'L'} {x:g} {y:g}" for i, (x, y) in enumerate(points))
    dash = ' stroke-dasharray="6 4"' if dashed else ""
    end = f' marker-end="url(#arrow-{colour[1:]})"' if arrow else ""
    return f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}{end}/>'


def _box(box: Box) -> list[str]:
    return [
        f'<rect x="{box.x}" y="{box.y}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{box.fill}" '
        f'stroke="#334155" stroke-width="1.5"/>',
        _text(box.centre_x, box.y + 26, box.title, size=15, weight="bold"),
        _text(box.centre_x, box.y + 47, box.detail, size=12, colour="#334155"),
    ]


def _marker(colour: str) -> str:
    return (f'<marker id="arrow-{colour[1:]}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
            f'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
            f'fill="{colour}"/></marker>')


def render() -> str:
    """The SVG document, deterministic: the same text on every run."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif">',
        "<title>patrol's loop: exporter, Prometheus, Alertmanager, worker, and the world it keeps "
        "alive</title>",
        "<defs>" + "".join(_marker(c) for c in (WRITE_COLOUR, READ_COLOUR, WORLD_COLOUR)) + "</defs>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
    ]
    exporter, prometheus, alertmanager, worker = (BY_KEY[k] for k in
                                                  ("exporter", "prometheus", "alertmanager", "worker"))
    mid = TOP_Y + BOX_H // 2
    # The alerting path along the top.
    for left, right, label in ((exporter, prometheus, "/metrics"), (prometheus, alertmanager, "alert fires"),
                               (alertmanager, worker, "webhook")):
        parts.append(_line([(left.x + BOX_W, mid), (right.x - 4, mid)], WORLD_COLOUR))
        parts.append(_text((left.x + BOX_W + right.x) / 2, mid - 8, label, size=12, colour=WORLD_COLOUR))
    # The worker's writes: down from the worker to a bus, then into each box it changes.
    left_end = min(BY_KEY[k].centre_x for k in WRITTEN) - 30
    parts.append(_line([(worker.centre_x, worker.bottom), (worker.centre_x, WRITE_BUS_Y),
                        (left_end, WRITE_BUS_Y)], WRITE_COLOUR, arrow=False))
    for key in WRITTEN:
        box = BY_KEY[key]
        parts.append(_line([(box.centre_x - 30, WRITE_BUS_Y), (box.centre_x - 30, BOTTOM_Y - 4)], WRITE_COLOUR))
    parts.append(_text(worker.centre_x - 10, WRITE_BUS_Y - 8,
                       "worker: create PAT → deliver → switch KEDA → drain → revoke old PAT",
                       size=12, colour=WRITE_COLOUR, anchor="end"))
    # The exporter's reads: up from each box to a bus that ends at the exporter.
    right_end = max(BY_KEY[k].centre_x for k in READ) + 30
    for key in READ:
        box = BY_KEY[key]
        parts.append(_line([(box.centre_x + 30, BOTTOM_Y), (box.centre_x + 30, READ_BUS_Y)], READ_COLOUR,
                           dashed=True, arrow=False))
    parts.append(_line([(right_end, READ_BUS_Y), (exporter.centre_x, READ_BUS_Y),
                        (exporter.centre_x, exporter.bottom + 4)], READ_COLOUR, dashed=True))
    parts.append(_text(exporter.centre_x + 14, READ_BUS_Y + 18,
                       "exporter reads: PAT expiry, does each copy authenticate, KEDA's failures, pool queues",
                       size=12, colour=READ_COLOUR, anchor="start"))
    # The world: the Secret feeds KEDA, KEDA starts agents and polls Azure DevOps with the PAT.
    secrets, keda, agents, ado = (BY_KEY[k] for k in ("secrets", "keda", "agents", "ado"))
    bottom_mid = BOTTOM_Y + BOX_H // 2
    parts.append(_line([(secrets.x + BOX_W, bottom_mid), (keda.x - 4, bottom_mid)], WORLD_COLOUR))
    parts.append(_line([(keda.x + BOX_W, bottom_mid), (agents.x - 4, bottom_mid)], WORLD_COLOUR))
    poll_y = BOTTOM_Y + BOX_H + 40
    parts.append(_line([(keda.centre_x, BOTTOM_Y + BOX_H), (keda.centre_x, poll_y), (ado.centre_x, poll_y),
                        (ado.centre_x, BOTTOM_Y + BOX_H + 4)], WORLD_COLOUR))
    parts.append(_text((keda.centre_x + ado.centre_x) / 2, poll_y - 8,
                       "KEDA polls the agent pool's job queue with the PAT from the Secret; agents run the jobs",
                       size=12, colour=WORLD_COLOUR))
    for box in BOXES:
        parts.extend(_box(box))
    legend_y = HEIGHT - 14
    parts.append(_text(20, legend_y, "blue: patrol · amber: your Prometheus stack · grey: the world patrol keeps "
                       "alive (simulated by patrol sandbox)", size=11, colour="#475569", anchor="start"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.loop_diagram", description="Draw docs/loop.svg.")
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/loop.svg is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = SVG_FILE.read_text(encoding="utf-8") if SVG_FILE.exists() else ""
        if current != text:
            print("docs/loop.svg is stale: run `python -m tools.loop_diagram`", file=sys.stderr)
            return 1
        return 0
    SVG_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SVG_FILE.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
