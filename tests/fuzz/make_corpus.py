#!/usr/bin/env python3
"""Writes the hand-made seed files of tests/fuzz/corpus/ (run from anywhere; needs shared/).

Small, valid (or nearly valid) examples of every input kind, so the fuzzers start from inputs
that reach deep into each parser. Seeds that need palu's own writers (session files, binary
frames, JSON requests) are written by the fuzz targets themselves: scripts/fuzz.sh --seeds.
"""
import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(ROOT, "corpus")
SHARED = os.environ.get("PALU_SHARED_DIR", os.path.join(ROOT, "..", "..", "..", "shared"))


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def shared(rel):
    with open(os.path.join(SHARED, rel), "rb") as f:
        return f.read()


# ---- safetensors ----------------------------------------------------------------------------
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


put("safetensors", "small", safetensors({
    "model.norm.weight": ("F32", [4], struct.pack("<4f", 1, 2, 3, 4)),
    "model.embed_tokens.weight": ("F16", [2, 3], struct.pack("<6H", *[0x3c00] * 6)),
    "lm_head.weight": ("BF16", [3, 1], struct.pack("<3H", 0x3f80, 0x4000, 0)),
    "empty": ("I32", [0], b""),
}, {"format": "pt"}))
put("safetensors", "dtypes", safetensors({
    "a": ("F64", [1], struct.pack("<d", 1.5)), "b": ("I64", [1], struct.pack("<q", -3)),
    "c": ("I16", [2], struct.pack("<2h", 1, -1)), "d": ("I8", [3], b"\x01\x02\xff"),
    "e": ("U8", [1, 1, 1], b"\x07"),
}))
# A real shard's header, its data section cut off (every tensor then lies past the end).
shard = shared("models/ref-mha/model-00004-of-00004.safetensors")
hlen = struct.unpack("<Q", shard[:8])[0]
put("safetensors", "ref_mha_shard4_header", shard[:8 + hlen][:4096])

# ---- shard index (the fuzz target's directory holds shards with a, b and c) -----------------
put("safetensors_index", "two_shards", json.dumps({
    "metadata": {"total_size": 30},
    "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors",
                   "c": "model-00002-of-00002.safetensors"}}, indent=2))
put("safetensors_index", "ref_mha_index", shared("models/ref-mha/model.safetensors.index.json")[:4096])

# ---- config.json ----------------------------------------------------------------------------
put("config_json", "ref_mha", shared("models/ref-mha/config.json"))
put("config_json", "ref_gqa", shared("models/ref-gqa/config.json"))
put("config_json", "qwen2", json.dumps({
    "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "hidden_act": "silu",
    "max_position_embeddings": 4096, "bos_token_id": None, "eos_token_id": 3,
    "rope_scaling": None}))
put("config_json", "mistral_rope_parameters", json.dumps({
    "model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
    "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 16, "vocab_size": 50,
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "attention_bias": False}))

# ---- GGUF -----------------------------------------------------------------------------------
U32, I32, F32, BOOL, STR, ARR = 4, 5, 6, 7, 8, 9


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gkv(key, typ, val, elem=None):
    out = gstr(key) + struct.pack("<I", typ)
    if typ == U32:
        out += struct.pack("<I", val)
    elif typ == I32:
        out += struct.pack("<i", val)
    elif typ == F32:
        out += struct.pack("<f", val)
    elif typ == BOOL:
        out += struct.pack("<B", val)
    elif typ == STR:
        out += gstr(val)
    elif typ == ARR:
        out += struct.pack("<IQ", elem, len(val))
        for v in val:
            out += gstr(v) if elem == STR else struct.pack({F32: "<f", I32: "<i"}[elem], v)
    return out


def gguf(kvs, tensors, alignment=32):
    """tensors: (name, ne list, ggml type, bytes)"""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs)) + b"".join(kvs)
    data, infos = b"", b""
    for name, ne, typ, raw in tensors:
        while len(data) % alignment:
            data += b"\0"
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        infos += struct.pack("<IQ", typ, len(data))
        data += raw
    out += infos
    while len(out) % alignment:
        out += b"\0"
    return out + data


def f32s(n, v=0.5):
    return struct.pack("<%df" % n, *([v] * n))


d, ff, vocab = 8, 16, 8
llama_kv = [
    gkv("general.architecture", STR, "llama"), gkv("llama.context_length", U32, 64),
    gkv("llama.embedding_length", U32, d), gkv("llama.block_count", U32, 1),
    gkv("llama.feed_forward_length", U32, ff), gkv("llama.attention.head_count", U32, 2),
    gkv("llama.attention.head_count_kv", U32, 1), gkv("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
    gkv("llama.rope.freq_base", F32, 10000.0),
]
tensors = [
    ("token_embd.weight", [d, vocab], 0, f32s(d * vocab)), ("output_norm.weight", [d], 0, f32s(d, 1.0)),
    ("blk.0.attn_norm.weight", [d], 0, f32s(d, 1.0)), ("blk.0.attn_q.weight", [d, d], 0, f32s(d * d)),
    ("blk.0.attn_k.weight", [d, 4], 0, f32s(d * 4)), ("blk.0.attn_v.weight", [d, 4], 0, f32s(d * 4)),
    ("blk.0.attn_output.weight", [d, d], 1, struct.pack("<%dH" % (d * d), *[0x3800] * (d * d))),
    ("blk.0.ffn_norm.weight", [d], 0, f32s(d, 1.0)), ("blk.0.ffn_gate.weight", [d, ff], 0, f32s(d * ff)),
    ("blk.0.ffn_up.weight", [d, ff], 0, f32s(d * ff)), ("blk.0.ffn_down.weight", [ff, d], 30,
                                                        struct.pack("<%dH" % (d * ff), *[0x3f00] * (d * ff))),
]
spm_tokens = ["<unk>", "<s>", "</s>", "<0x0A>", "\u2581", "\u2581a", "a", "b"]
spm_vocab = [
    gkv("tokenizer.ggml.model", STR, "llama"), gkv("tokenizer.ggml.tokens", ARR, spm_tokens, STR),
    gkv("tokenizer.ggml.scores", ARR, [0.0, 0.0, 0.0, 0.0, -1.0, -0.5, -2.0, -3.0], F32),
    gkv("tokenizer.ggml.token_type", ARR, [2, 3, 3, 6, 1, 1, 1, 1], I32),
    gkv("tokenizer.ggml.bos_token_id", U32, 1), gkv("tokenizer.ggml.eos_token_id", U32, 2),
]
put("gguf", "tiny_llama_spm", gguf(llama_kv + spm_vocab, tensors))
bpe_tokens = ["a", "b", "\u0120", "ab", "\u0120a", "<|bos|>", "<|eos|>", "c"]
bpe_vocab = [
    gkv("tokenizer.ggml.model", STR, "gpt2"), gkv("tokenizer.ggml.pre", STR, "llama-bpe"),
    gkv("tokenizer.ggml.tokens", ARR, bpe_tokens, STR),
    gkv("tokenizer.ggml.token_type", ARR, [1, 1, 1, 1, 1, 3, 3, 1], I32),
    gkv("tokenizer.ggml.merges", ARR, ["a b", "\u0120 a"], STR),
    gkv("tokenizer.ggml.bos_token_id", U32, 5), gkv("tokenizer.ggml.eos_token_id", U32, 6),
]
put("gguf", "tiny_llama_bpe_align64", gguf(llama_kv + bpe_vocab + [gkv("general.alignment", U32, 64)],
                                          tensors, 64))
put("gguf", "stories260K_head", shared("models/stories260K/stories260K-f32.gguf")[:4096])

# ---- palu.json (the fuzz target's model: 2 layers, 4 KV heads of 16 dims) --------------------
manifest = {
    "format": "palu-compressed", "version": 1, "group_size": 2, "ratio": 0.5, "achieved_ratio": 0.5,
    "search": "fisher_uniform", "rank_align": 32, "hadamard": True,
    "source": {"model": "ref-mha", "fingerprint": "xxh3-64:0123456789abcdef"},
    "calibration": {"file": "calib.txt", "fingerprint": "xxh3-64:1", "samples": 8, "seq_len": 128,
                    "tokens": 1024, "fisher_samples": 4},
    "k_ranks": [[16, 8], [32, 1]], "v_ranks": [[16, 16], [4, 32]],
    "value_fold": "at_load", "factors_file": "palu.safetensors", "created_by": "palu-compress 0.1.0"}
put("palu_manifest", "g2", json.dumps(manifest, indent=2))
manifest.update({"group_size": 4, "k_ranks": [[64], [32]], "v_ranks": [[1], [16]], "hadamard": False})
put("palu_manifest", "g4", json.dumps(manifest))

# ---- tokenizer files --------------------------------------------------------------------------
put("tokenizer_file", "sentencepiece_tok512", shared("models/stories260K/tok512.model"))
tik = shared("tokenizers/llama3/tokenizer.model").split(b"\n")
put("tokenizer_file", "tiktoken_first300", b"\n".join(tik[:300]) + b"\n")
put("tokenizer_file", "tokenizer_json", json.dumps({
    "version": "1.0", "normalizer": None,
    "added_tokens": [{"id": 8, "content": "<|begin_of_text|>", "special": True},
                     {"id": 9, "content": "<|end_of_text|>", "special": True},
                     {"id": 10, "content": "<tool>", "special": False}],
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "\\s?\\p{L}+|\\s?\\p{N}{1,3}|\\s?[^\\s\\p{L}\\p{N}]+|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "TemplateProcessing",
                       "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                  {"Sequence": {"id": "A", "type_id": 0}}]},
    "model": {"type": "BPE", "ignore_merges": True,
              "vocab": {"a": 0, "b": 1, "\u0120": 2, "ab": 3, "\u0120a": 4, "c": 5, "\u010a": 6, "1": 7},
              "merges": ["a b", ["\u0120", "a"]]}}, indent=1))
put("tokenizer_file", "gguf_tiny_spm", gguf(llama_kv + spm_vocab, []))

# ---- text for the encoders ----------------------------------------------------------------------
inp = shared("tokenizers/llama3/ggml-vocab-llama-bpe.gguf.inp")
for target in ("tokenizer_encode_sp", "tokenizer_encode_bpe"):
    put(target, "llama_cpp_vectors", inp)
    put(target, "wikitext", shared("data/heldout.txt")[:2048])
    put(target, "mixed_scripts", "Hello world! 123 4567 \u00e9\u00e8 \u4f60\u597d \U0001f600 \t\n  x<|eot_id|>"
                                  "<s></s> \u0645\u0631\u062d\u0628\u0627 \xff".encode("utf-8") + b"\xff\xc3(\x80")
print("corpus written to", CORPUS)
