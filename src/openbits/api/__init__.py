"""The management API: CIM-shaped HTTP over a Unix socket."""
