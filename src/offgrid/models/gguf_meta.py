"""GGUF metadata: what the registry and the memory estimate need, read from the header.

Besides the hyperparameters it sums the bytes of each repeating layer's tensors
(``blk.N.*``), of the input embeddings and of the output layer, so that placement can put
whole layers on the GPU and count exactly what moves there.

The ``gguf`` package supplies the tensor and file types; it is imported only when a
header is read (it brings numpy: 120 ms on every command otherwise). Its ``GGUFReader``
parses every element of every array, the tokenizer's 50k-260k strings included, which took
4.5 s for SmolLM2 and 23 s for Gemma 3 270M here; this reader skips arrays it does not need
and reads the same facts in milliseconds (docs/decisions.md).
"""

from __future__ import annotations

import functools
import mmap
import re
import struct
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path
from typing import Any

from offgrid.errors import BadRequestError, IncompleteGGUFError

__all__ = ["GGUFInfo", "read_gguf_info"]

# The GGUF value types (fixed by the format: gguf.GGUFValueType) and how scalars unpack.
_STRING, _ARRAY = 8, 9
_SCALARS: dict[int, str] = {
    0: "<B",  # UINT8
    1: "<b",  # INT8
    2: "<H",  # UINT16
    3: "<h",  # INT16
    4: "<I",  # UINT32
    5: "<i",  # INT32
    6: "<f",  # FLOAT32
    7: "<?",  # BOOL
    10: "<Q",  # UINT64
    11: "<q",  # INT64
    12: "<d",  # FLOAT64
}


@functools.cache
def _block_sizes() -> dict[int, tuple[int, int]]:
    """(elements, bytes) per block of each tensor type, from the ``gguf`` package."""
    from gguf import GGML_QUANT_SIZES

    return {int(t): size for t, size in GGML_QUANT_SIZES.items()}


def _file_type(value: object) -> str:
    """The name of a ``general.file_type`` (``MOSTLY_Q4_K_M`` → ``Q4_K_M``)."""
    from gguf import LlamaFileType

    try:
        name = LlamaFileType(value if isinstance(value, int) else -1).name
    except ValueError:
        return "unknown"
    return name.removeprefix("MOSTLY_")


@dataclass(frozen=True)
class GGUFInfo:
    """Facts about one GGUF file that listing, scheduling and templating rely on."""

    architecture: str
    name: str
    parameters: int
    quantization: str
    context_length: int
    chat_template: bool
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    key_length: int
    value_length: int
    feed_forward_length: int
    vocab_size: int
    layer_bytes: tuple[int, ...]  # weights of each repeating layer, blk.0 first
    input_bytes: int  # token embeddings and what else belongs to no layer
    output_bytes: int  # output norm and projection
    tied_output: bool  # no output projection: the engine reuses the token embeddings
    data_end: int  # where the last tensor ends: the size of the complete file (0 if unknown)
    general_type: str  # ``general.type``: "model", "mmproj" (a vision projector), or ""
    pooling_type: int | None  # ``{arch}.pooling_type`` (llama.cpp's: 1 mean, 2 cls, 3 last, 4 rank)
    causal_attention: bool  # False for encoders (BERT and kin): each input in one batch
    reranker: bool  # a classification head (``cls.*``, output labels) or rank pooling
    thinking: bool  # the chat template can think (``<think>``, ``enable_thinking``, ...)
    tools: bool  # the chat template takes ``tools``

    @property
    def projector(self) -> bool:
        """A multimodal projector (mmproj) file: what gives a model vision, not a model."""
        return self.general_type == "mmproj" or self.architecture == "clip"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_row(self) -> list[Any]:
        """The values in field order: what the registry's index stores (as JSON, half the
        decoding time of ``as_dict``'s: ``offgrid list`` decodes one per model)."""
        return list(astuple(self))

    @classmethod
    def from_stored(cls, data: list[Any] | dict[str, Any]) -> GGUFInfo:
        """The inverse of ``as_row`` (or of ``as_dict``, as older versions stored it).

        What another version stored, with other fields, raises (KeyError or ValueError):
        the file is then read again."""
        if isinstance(data, dict):
            data = [data[f.name] for f in fields(cls)]
        if len(data) != len(fields(cls)):
            raise ValueError("stored with other fields")
        data[_LAYER_BYTES] = tuple(data[_LAYER_BYTES])  # JSON made the tuple a list
        return cls(*data)


_LAYER_BYTES = [f.name for f in fields(GGUFInfo)].index("layer_bytes")


@dataclass(frozen=True)
class _Array:
    """An array value of the header, of which only the length is kept."""

    length: int


_LAYER = re.compile(r"blk\.(\d+)\.")
_CLASSIFIER = frozenset({"cls.weight", "cls.output.weight"})  # llama.cpp's LLM_TENSOR_CLS*
_RANK = 4  # LLAMA_POOLING_TYPE_RANK
# What chat templates that think mention (Qwen3, DeepSeek-R1, gpt-oss and kin).
_THINKING = ("<think>", "enable_thinking", "reasoning_content", "reasoning_effort")
_TOOLS = re.compile(r"\btools\b")


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.unpack("<Q")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        """A scalar or string; for an array, its length (the elements are skipped)."""
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.unpack("<I"), self.unpack("<Q")
            if etype == _STRING:
                for _ in range(count):  # skip: only lengths are read
                    n = self.unpack("<Q")
                    self.pos += n
            elif etype in _SCALARS:
                self.pos += count * struct.calcsize(_SCALARS[etype])
            else:
                for _ in range(count):
                    self.value(etype)
            return _Array(count)
        return self.unpack(_SCALARS[vtype])


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read the metadata of a GGUF file; a file that is not GGUF gives a clear error.

    A file that ends before its header or its tensor data does raises
    ``IncompleteGGUFError``, so a model being copied in is not taken for a model.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
            if head != b"GGUF"[: len(head)]:
                raise BadRequestError(
                    f"{path.name} is not a GGUF model file (it does not start with 'GGUF')"
                )
            if len(head) < 4:
                raise IncompleteGGUFError(f"{path.name} is incomplete: only {len(head)} bytes")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                info = _parse(_Cursor(buf), path)
    except struct.error as exc:
        raise IncompleteGGUFError(f"{path.name} is incomplete: its header is cut short") from exc
    except (KeyError, ValueError, OSError, UnicodeError) as exc:
        raise BadRequestError(f"{path.name} is not a readable GGUF model file: {exc}") from exc
    size = path.stat().st_size
    if size < info.data_end:
        raise IncompleteGGUFError(
            f"{path.name} is incomplete: {size:,} of {info.data_end:,} bytes "
            "(still being copied, or cut short)"
        )
    return info


def _parse(cur: _Cursor, path: Path) -> GGUFInfo:
    if cur.buf[:4] != b"GGUF":
        raise ValueError("missing GGUF magic bytes")
    cur.pos = 4
    version = cur.unpack("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    kv: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        kv[key] = cur.value(cur.unpack("<I"))
    parameters = 0
    tensors: list[tuple[int, str]] = []  # (data offset, name)
    last_end = 0  # relative to the data section; 0 once a tensor type is unknown
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.unpack("<Q") for _ in range(cur.unpack("<I"))]
        ttype, offset = cur.unpack("<I"), cur.unpack("<Q")
        tensors.append((offset, name))
        count = 1
        for d in dims:
            count *= d
        parameters += count
        block = _block_sizes().get(ttype)
        if block is None or last_end < 0:
            last_end = -1
        else:
            last_end = max(last_end, offset + count // block[0] * block[1])
    align = kv.get("general.alignment", 32)
    align = align if isinstance(align, int) and align > 0 else 32
    data_start = -(-cur.pos // align) * align
    arch = str(kv.get("general.architecture", "unknown"))
    layers: dict[int, int] = {}
    input_bytes = output_bytes = 0
    tensors.sort()
    ends = [offset for offset, _ in tensors[1:]] + [len(cur.buf) - data_start]
    for (offset, name), end in zip(tensors, ends, strict=True):
        size = max(0, end - offset)  # the next tensor's offset: the size, padding included
        if match := _LAYER.match(name):
            layers[int(match.group(1))] = layers.get(int(match.group(1)), 0) + size
        elif name.startswith("output"):
            output_bytes += size
        else:
            input_bytes += size

    def arch_int(key: str, default: int = 0) -> int:
        value = kv.get(f"{arch}.{key}", default)
        return int(value) if isinstance(value, int | float) else default

    quant = _file_type(kv.get("general.file_type"))
    heads = arch_int("attention.head_count")
    embd = arch_int("embedding_length")
    head_dim = embd // heads if heads else 0
    vocab = kv.get("tokenizer.ggml.tokens")
    block_count = arch_int("block_count", len(layers))
    pooling = kv.get(f"{arch}.pooling_type")
    pooling = int(pooling) if isinstance(pooling, int) else None
    templates = " ".join(
        v for k, v in kv.items() if k.startswith("tokenizer.chat_template") and isinstance(v, str)
    )
    return GGUFInfo(
        architecture=arch,
        name=str(kv.get("general.name") or path.stem),
        parameters=parameters,
        quantization=quant,
        context_length=arch_int("context_length"),
        chat_template=bool(kv.get("tokenizer.chat_template")),
        block_count=block_count,
        embedding_length=embd,
        head_count=heads,
        head_count_kv=arch_int("attention.head_count_kv", heads),
        key_length=arch_int("attention.key_length", head_dim),
        value_length=arch_int("attention.value_length", head_dim),
        feed_forward_length=arch_int("feed_forward_length", 4 * embd),
        vocab_size=vocab.length if isinstance(vocab, _Array) else arch_int("vocab_size"),
        layer_bytes=tuple(layers.get(i, 0) for i in range(block_count)),
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        tied_output=not any(name == "output.weight" for _, name in tensors),
        data_end=data_start + last_end if last_end > 0 else 0,
        general_type=str(kv.get("general.type") or ""),
        pooling_type=pooling,
        causal_attention=kv.get(f"{arch}.attention.causal", True) is not False,
        reranker=pooling == _RANK
        or f"{arch}.classifier.output_labels" in kv
        or any(name in _CLASSIFIER for _, name in tensors),
        thinking=any(marker in templates for marker in _THINKING),
        tools=bool(_TOOLS.search(templates)),
    )
