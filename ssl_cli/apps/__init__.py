"""The commands: ssl-train (train), ssl-report (report), ssl-bench (bench); preflight checks ssl-train's input."""
