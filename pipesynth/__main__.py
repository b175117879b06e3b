"""`python -m pipesynth ...` runs the command line, like the `pipesynth` script."""

from pipesynth.cli import main

main()
