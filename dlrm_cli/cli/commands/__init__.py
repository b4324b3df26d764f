"""One module per ``dlrm`` subcommand: each parses its options, calls the core and prints the result."""
