"""``python -m musiq_daemon`` runs the ``musiqd`` command."""

from musiq_daemon.cli import main

main()
