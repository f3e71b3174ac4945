"""What a CLI command does beyond the checks (DESIGN §6): ``export`` (and later init, demo,
fix). Each module has a Python entry point that the CLI calls."""
