"""``python -m kerasllm ...`` runs the same command line as ``kerasllm ...``."""
import sys

from kerasllm.cli import main

sys.exit(main())
