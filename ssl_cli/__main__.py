"""`python -m ssl_cli ...` is `ssl-train ...`."""

from ssl_cli.apps.train import main

main()
