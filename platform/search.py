"""`python -m platform.search FILE [--num-samples N] [--max-concurrent N] [--replicates K] [--address ADDR]
[--tracking-uri URI] [--name NAME] [--resume] [hydra overrides ...]`. The implementation lives in dcell_core.search
(Ray workers must be able to import everything the trials use; see docs/architecture.md)."""
import sys

from dcell_core.search.cli import main

if __name__ == "__main__":
    sys.exit(main())
