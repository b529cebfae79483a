"""The HuggingFace Hub, the one place OffGrid reaches out to, and only when asked:
search (``client``), verified resumable downloads (``download``), running pulls (``pulls``).
"""
