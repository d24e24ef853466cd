"""``python -m hallbench`` (used by ``torchrun ... -m hallbench eval ...``)."""

from hallbench.cli import main

main()
