"""``medseg`` command: 3-D volume segmentation (predict/train/evaluate/import-stunet) and ``medseg phases``."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``medseg phases ...`` to the temporal pipeline, everything else to the volume pipeline."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "phases":
        from medseg.phases.cli import main as phases_main

        return phases_main(args[1:])
    from medseg.volume_cli import main as volume_main

    return volume_main(args)


if __name__ == "__main__":
    sys.exit(main())
