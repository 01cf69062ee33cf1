"""Command-line interface: one module per subcommand, each importing heavy packages lazily."""
