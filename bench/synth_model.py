"""Write a llama-architecture GGUF of any size with random weights, for memory measurements.

The weights are noise (answers are gibberish), but the engine loads, offloads and runs it
exactly as it would a real model of that shape: what placement and the memory estimate
need to be checked against, on machines that cannot download a real one. The tokenizer
and chat template are copied from a donor GGUF (e.g. the starter model).

Run: .venv/bin/python bench/synth_model.py OUT.gguf --donor SmolLM2.gguf --layers 32 \
        --embd 4096 --ff 11008 --heads 32 --kv-heads 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType


def copy_tokenizer(donor: Path, writer: GGUFWriter) -> int:
    """Copy every ``tokenizer.*`` key of ``donor``; returns the vocabulary size."""
    vocab = 0
    for field in GGUFReader(donor).fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        vtype = GGUFValueType(field.types[0])
        sub = GGUFValueType(field.types[1]) if vtype == GGUFValueType.ARRAY else None
        value = field.contents()
        writer.add_key_value(field.name, value, vtype, sub)
        if field.name == "tokenizer.ggml.tokens":
            vocab = len(value)
    return vocab


def write_model(out: Path, donor: Path, args: argparse.Namespace) -> None:
    writer = GGUFWriter(str(out), "llama")
    writer.add_name(out.stem)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    writer.add_context_length(args.ctx)
    writer.add_embedding_length(args.embd)
    writer.add_block_count(args.layers)
    writer.add_feed_forward_length(args.ff)
    writer.add_head_count(args.heads)
    writer.add_head_count_kv(args.kv_heads)
    writer.add_rope_dimension_count(args.embd // args.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    vocab = copy_tokenizer(donor, writer)
    rng = np.random.default_rng(0)

    def noise(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16)

    kv = args.kv_heads * (args.embd // args.heads)
    ones = np.ones(args.embd, dtype=np.float32)
    # one array per shape, shared by every layer: the file is as large, the RAM is not
    layer = {
        "attn_norm.weight": ones,
        "attn_q.weight": noise(args.embd, args.embd),
        "attn_k.weight": noise(kv, args.embd),
        "attn_v.weight": noise(kv, args.embd),
        "attn_output.weight": noise(args.embd, args.embd),
        "ffn_norm.weight": ones,
        "ffn_gate.weight": noise(args.ff, args.embd),
        "ffn_up.weight": noise(args.ff, args.embd),
        "ffn_down.weight": noise(args.embd, args.ff),
    }
    writer.add_tensor("token_embd.weight", noise(vocab, args.embd))
    for i in range(args.layers):
        for name, data in layer.items():
            writer.add_tensor(f"blk.{i}.{name}", data)
    writer.add_tensor("output_norm.weight", ones)
    if not args.tied:
        writer.add_tensor("output.weight", noise(vocab, args.embd))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--donor", type=Path, required=True, help="GGUF to take the tokenizer from")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--embd", type=int, default=1024)
    parser.add_argument("--ff", type=int, default=2816)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--tied", action="store_true", help="no output.weight: reuse embeddings")
    args = parser.parse_args()
    write_model(args.out, args.donor, args)
    print(f"{args.out}: {args.out.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
