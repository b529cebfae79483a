"""The README.txt at the top of a pack: what it holds, how to install it, how to check it
by hand, for the person who finds the stick."""

from __future__ import annotations

from typing import Any

from offgrid.units import human_size

__all__ = ["readme"]


def readme(pack: dict[str, Any]) -> str:
    """The text, from the pack's ``pack.json``."""
    needs, sizes, engine = pack["needs"], pack["sizes"], pack["engine"]
    models = [f"  {m['id']} ({human_size(m['size'])})" for m in pack["models"]] or ["  none"]
    return "\n".join(
        [
            f"OffGrid LLM {pack['offgrid']}: offline installer made by `offgrid pack`",
            f"Made {pack['created_at']}, {human_size(sizes['total'])}.",
            "",
            f"  source/      OffGrid {pack['offgrid']}",
            f"  wheelhouse/  every Python package, for python {', '.join(needs['python'])}",
            f"  engine/      llama-server, {engine['backend']} ({engine['version']})",
            "  models/      the models, as a signed bundle:",
            *models,
            "",
            "Install it on an x86-64 Linux box with systemd, its python3 one of "
            f"{', '.join(needs['python'])},",
            f"glibc {needs['glibc']} or newer and openssl {needs['openssl']}; "
            "no network is needed:",
            "",
            "  sudo bash install.sh [--cpu-only] [--prefix DIR] [--dry-run]",
            "",
            "It checks the signature and every file first, and installs nothing from a pack",
            "that was changed or is incomplete (`bash install.sh --verify-only` only checks).",
            "",
            "Check it by hand:",
            "  openssl pkeyutl -verify -pubin -inkey signer.pub -rawin -in SHA256SUMS "
            "-sigfile SHA256SUMS.sig",
            "  sha256sum -c --strict --quiet SHA256SUMS",
            "",
            "It is signed by the node key",
            f"  {pack['signer']}",
            "(what `offgrid signing-key` prints on the node that made it).",
            "To refuse any other signer:",
            f"  sudo bash install.sh --key {pack['signer']}",
            "",
        ]
    )
