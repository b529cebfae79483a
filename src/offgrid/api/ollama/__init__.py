"""Ollama's native API on OffGrid's port: ``inference`` (chat, generate, embed, translated to
the engine on the relay's path) and ``routes`` (tags, show, ps, pull, delete, copy, version)."""
