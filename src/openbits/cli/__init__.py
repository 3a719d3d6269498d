"""Command lines: `openbits` and `bitsadmin`."""
