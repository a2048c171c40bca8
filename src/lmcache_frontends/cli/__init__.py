"""The `lmcache` command line: one console script with subcommands."""
