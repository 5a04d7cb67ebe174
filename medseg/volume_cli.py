"""``medseg`` command (3-D volume segmentation): not part of this version yet; replaced when the pipeline lands."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from shared_backbones._unavailable import unavailable


def main(argv: Sequence[str] | None = None) -> int:
    return unavailable("medseg", "3-D volume segmentation")


if __name__ == "__main__":
    sys.exit(main())
