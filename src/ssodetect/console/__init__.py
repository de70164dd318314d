"""The operations console: a web page over a directory of runs (``ssodetect serve``; the ``[console]`` extra)."""
