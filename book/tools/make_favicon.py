"""Draw ``book/_extra/favicon.ico`` from the shapes of ``book/figures/logo.svg`` (with Pillow).

Usage: python book/tools/make_favicon.py
Pages declare the SVG logo as their icon, but a page without that link (the root ``index.html``
that redirects to the first chapter) makes browsers ask for ``/favicon.ico``. Sphinx copies
``book/_extra/`` (``html_extra_path``) to the root of the built site, so that request succeeds.
The ICO is committed; rerun this script after changing the logo. Output is deterministic.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

TARGET = Path(__file__).resolve().parents[1] / "_extra" / "favicon.ico"
SCALE = 4  # draw at 256 px (the SVG's 64-unit canvas times 4), downsample to the icon sizes
SIZES = [(16, 16), (32, 32), (48, 48), (64, 64)]


def cubic(p0: tuple, p1: tuple, p2: tuple, p3: tuple, steps: int = 64) -> list[tuple[float, float]]:
    """Points of the cubic Bézier curve with control points ``p0..p3`` (SVG ``C`` command)."""
    points = []
    for i in range(steps + 1):
        t = i / steps
        a, b, c, d = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3
        points.append((a * p0[0] + b * p1[0] + c * p2[0] + d * p3[0],
                       a * p0[1] + b * p1[1] + c * p2[1] + d * p3[1]))
    return points


def draw_logo() -> Image.Image:
    """The logo at 256 x 256: rounded square, white bump curve, yellow dot (as in logo.svg)."""
    s = SCALE
    image = Image.new("RGBA", (64 * s, 64 * s), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((2 * s, 2 * s, 62 * s, 62 * s), radius=12 * s, fill="#1f4e79")
    curve = cubic((6, 48), (18, 48), (22, 14), (32, 14)) + cubic((32, 14), (42, 14), (46, 48), (58, 48))
    scaled = [(x * s, y * s) for x, y in curve]
    draw.line(scaled, fill="#ffffff", width=4 * s, joint="curve")
    for x, y in (scaled[0], scaled[-1]):  # round line caps
        draw.ellipse((x - 2 * s, y - 2 * s, x + 2 * s, y + 2 * s), fill="#ffffff")
    draw.ellipse((28 * s, 44 * s, 36 * s, 52 * s), fill="#f2b134")
    return image


def main() -> None:
    """Write the ICO atomically."""
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=TARGET.parent, suffix=".ico.tmp")
    os.close(fd)
    draw_logo().save(tmp, format="ICO", sizes=SIZES)
    os.chmod(tmp, 0o644)
    os.replace(tmp, TARGET)
    print(TARGET)


if __name__ == "__main__":
    main()
