"""Console commands: each module's main(argv) is one stage script (installed as cellemnet-<name>)."""
