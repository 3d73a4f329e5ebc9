"""Unpack the wheels in a folder that match this Python into a site folder (no pip needed).

Used by run_checks.sh only when ``pip install --no-index --find-links`` is not available on the
GPU box. A wheel is a zip of importable files; for each distribution the first wheel whose tags
this interpreter supports (``packaging.tags.sys_tags()``) is unpacked.
"""

import sys
import zipfile
from pathlib import Path

from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename


def main(wheels: str, site: str) -> int:
    supported = list(sys_tags())
    rank = {t: i for i, t in enumerate(supported)}
    best: dict[str, tuple[int, Path]] = {}
    for whl in sorted(Path(wheels).glob("*.whl")):
        name, _, _, tags = parse_wheel_filename(whl.name)
        score = min((rank[t] for t in tags if t in rank), default=None)
        if score is not None and (name not in best or score < best[name][0]):
            best[name] = (score, whl)
    Path(site).mkdir(parents=True, exist_ok=True)
    for name, (_, whl) in sorted(best.items()):
        with zipfile.ZipFile(whl) as zf:
            zf.extractall(site)
        print(f"unpacked {whl.name}")
    return 0 if best else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
