"""`python -m histosynth` (and `accelerate launch -m histosynth ...`) runs the CLI."""

from histosynth.cli import main

main()
