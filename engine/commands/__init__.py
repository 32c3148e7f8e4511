"""Sub-commands of the `rules-engine` command line, one module each."""
