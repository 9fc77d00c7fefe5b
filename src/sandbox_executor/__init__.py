"""sandbox-executor: runs untrusted code in Bubblewrap sandboxes and reports the results."""

__version__ = "0.1.0"
