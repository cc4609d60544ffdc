"""`python -m mailmux.backend` is `mailmux-backend`."""

from mailmux.backend.cli import main

main(prog_name="mailmux-backend")
