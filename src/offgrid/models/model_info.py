"""What the registry tells of one model: its file(s), metadata, hash, origin and kind."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from offgrid.models.gguf_meta import GGUFInfo

__all__ = ["ENCODERS", "POOLED", "Kind", "ModelInfo", "Task"]

Kind = Literal["chat", "embedding", "rerank"]
Task = Literal["chat", "embed", "rerank", "transcribe"]  # what a route asks of a model

# Which kinds do which task: a chat model embeds too (its engine pools its states)
_SERVES: dict[Task, frozenset[Kind]] = {
    "chat": frozenset({"chat"}),
    "embed": frozenset({"chat", "embedding"}),
    "rerank": frozenset({"rerank"}),
    "transcribe": frozenset({"chat"}),  # with an audio projector: the engine checks which
}
_WHERE = {
    "embedding": "embeddings (/v1/embeddings, Ollama's /api/embed)",
    "rerank": "reranking (/v1/rerank)",
    "chat": "chat and completions",
}

# llama.cpp's encoder-only architectures: they embed text, they do not generate it
# (XLM-RoBERTa models are converted to "bert"; "t5" is an encoder-decoder and generates).
ENCODERS = frozenset(
    {
        "bert",
        "modern-bert",
        "nomic-bert",
        "nomic-bert-moe",
        "neo-bert",
        "jina-bert-v2",
        "jina-bert-v3",
        "eurobert",
        "gemma-embedding",
        "t5encoder",
        "llama-embed",
    }
)
POOLED = frozenset({1, 2, 3})  # mean, cls, last: a pooled embedding (0 none, 4 rank)


@dataclass(frozen=True)
class ModelInfo:
    """One model OffGrid can serve."""

    id: str
    path: Path
    size: int  # bytes of all its files, the projector's included
    mtime: float
    gguf: GGUFInfo | None
    error: str | None = None  # why the metadata could not be read, if it could not
    sha256: str | None = None  # as recorded at import or first verification
    origin: Mapping[str, Any] = field(default_factory=dict, compare=False)
    owned: bool = True  # in the models folder: removing the model deletes the file
    more_parts: tuple[Path, ...] = ()  # a split model's parts after the first (``path``)
    projector: Path | None = None  # the multimodal projector (mmproj) that gives it vision
    projector_size: int = 0

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file of the model: one, or each part of a split model, and its projector."""
        return (self.path, *self.more_parts, *((self.projector,) if self.projector else ()))

    @property
    def reference(self) -> bool:
        """A file registered where it lies, outside the model folders."""
        return bool(self.origin.get("reference"))

    @property
    def kind(self) -> Kind:
        """What the engine serves it for, from its GGUF header: ``rerank`` for a
        classification head or rank pooling; ``embedding`` for an encoder architecture,
        non-causal attention, or a declared mean/cls/last pooling (decoder embedders such
        as Qwen3-Embedding); ``chat`` otherwise, and when the header could not be read."""
        g = self.gguf
        if g is None:
            return "chat"
        if g.reranker:
            return "rerank"
        if g.architecture in ENCODERS or not g.causal_attention or g.pooling_type in POOLED:
            return "embedding"
        return "chat"

    def refusal(self, task: Task) -> str | None:
        """Why this model cannot do ``task`` (a message for the client), or None if it can."""
        kind = self.kind
        if task == "transcribe" and kind == "chat" and self.projector is None:
            return (
                f"'{self.id}' cannot transcribe: it has no projector (mmproj) for audio. "
                "Use a model that comes with an audio projector."
            )
        if kind in _SERVES[task]:
            return None
        article = "an" if kind == "embedding" else "a"
        return f"'{self.id}' is {article} {kind} model: it serves {_WHERE[kind]}, not {task}."

    @property
    def capabilities(self) -> list[str]:
        """What it can do, in Ollama's words: ``completion``, ``embedding`` or ``rerank``
        (its kind), then ``tools``, ``vision`` and ``thinking`` for a chat model."""
        kind = self.kind
        if kind != "chat":
            return [kind]
        g = self.gguf
        found = {
            "tools": bool(g and g.tools),
            "vision": self.projector is not None,
            "thinking": bool(g and g.thinking),
        }
        return ["completion", *(name for name, has in found.items() if has)]

    def as_dict(self) -> dict[str, Any]:
        """What ``offgrid show`` and ``/api/models`` tell of the model."""
        g = self.gguf
        return {
            "id": self.id,
            "path": str(self.path),
            "size": self.size,
            "modified_at": self.mtime,
            "sha256": self.sha256,
            "origin": dict(self.origin),
            "owned": self.owned,
            "parts": 1 + len(self.more_parts),
            "projector": str(self.projector) if self.projector else None,
            "kind": self.kind,
            "capabilities": self.capabilities,
            "error": self.error,
            "architecture": g.architecture if g else None,
            "name": g.name if g else None,
            "parameters": g.parameters if g else None,
            "quantization": g.quantization if g else None,
            "context_length": g.context_length if g else None,
            "chat_template": g.chat_template if g else None,
            "layers": g.block_count if g else None,
        }
