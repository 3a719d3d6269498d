"""Moving bytes: HTTP(S) and local sources into temporary files (no job states here)."""
