"""What a GGUF file says about its model, read with gguf-py (metadata only, no weights loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def gguf_info(path: str | Path) -> dict[str, Any]:
    """Architecture, layer/head geometry, trained context, chat template and KV bytes per token."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(key: str) -> Any:
        f = reader.fields.get(key)
        return None if f is None else f.contents()

    arch = field("general.architecture")
    layers = field(f"{arch}.block_count")
    heads = field(f"{arch}.attention.head_count")
    kv_heads = field(f"{arch}.attention.head_count_kv") or heads
    embed = field(f"{arch}.embedding_length")
    k_len = field(f"{arch}.attention.key_length") or (embed // heads if embed and heads else None)
    v_len = field(f"{arch}.attention.value_length") or k_len
    kv_bytes = layers * kv_heads * (k_len + v_len) * 2 if layers and kv_heads and k_len and v_len else None
    return {"architecture": arch, "name": field("general.name"), "layers": layers, "kv_heads": kv_heads,
            "key_length": k_len, "value_length": v_len, "embedding_length": embed,
            "context_length": field(f"{arch}.context_length"), "chat_template": field("tokenizer.chat_template"),
            "file_type": field("general.file_type"),
            "kv_bytes_per_token": kv_bytes}  # f16 K and V
