"""Running OffGrid as a system service: the systemd notify protocol (``notify``)."""
