"""Property-based fuzzing of the parsers of untrusted input (issue 5, item 6)."""
