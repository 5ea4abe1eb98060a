#!/usr/bin/env python3
"""Writes a small XLM checkpoint with random float32 weights (fixed seed):
config.json, model.safetensors and the tokenizer files of a template folder.

Usage: make_checkpoint.py OUT_DIR TEMPLATE_DIR [--emb 16] [--layers 1] [--heads 2]
                          [--causal] [--langs en,fr] [--max-pos 128]
For tests that need a model of a given shape (speed, memory), not values."""
import argparse, json, os, random, shutil, struct

p = argparse.ArgumentParser()
p.add_argument("out"); p.add_argument("template")
p.add_argument("--emb", type=int, default=16); p.add_argument("--layers", type=int, default=1)
p.add_argument("--heads", type=int, default=2); p.add_argument("--causal", action="store_true")
p.add_argument("--langs", default="en,fr"); p.add_argument("--max-pos", type=int, default=128)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
    src = os.path.join(a.template, name)
    if os.path.exists(src):
        shutil.copyfile(src, os.path.join(a.out, name))
vocab = len(json.load(open(os.path.join(a.template, "vocab.json"))))
langs = a.langs.split(",")
config = {"architectures": ["XLMWithLMHeadModel"], "vocab_size": vocab, "emb_dim": a.emb,
          "n_layers": a.layers, "n_heads": a.heads, "n_langs": len(langs), "use_lang_emb": True,
          "lang2id": {l: i for i, l in enumerate(langs)}, "id2lang": {str(i): l for i, l in enumerate(langs)},
          "causal": a.causal, "gelu_activation": True, "sinusoidal_embeddings": False,
          "max_position_embeddings": a.max_pos, "layer_norm_eps": 1e-12, "pad_index": 2,
          "eos_index": 1, "bos_index": 0, "unk_index": 3, "mask_index": 5, "asm": False}
json.dump(config, open(os.path.join(a.out, "config.json"), "w"), indent=2)
d, h = a.emb, 4 * a.emb
shapes = {"position_embeddings.weight": [a.max_pos, d], "embeddings.weight": [vocab, d],
          "layer_norm_emb.weight": [d], "layer_norm_emb.bias": [d], "pred_layer.proj.bias": [vocab]}
if len(langs) > 1:
    shapes["lang_embeddings.weight"] = [len(langs), d]
for i in range(a.layers):
    for lin in ("q_lin", "k_lin", "v_lin", "out_lin"):
        shapes["attentions.%d.%s.weight" % (i, lin)] = [d, d]
        shapes["attentions.%d.%s.bias" % (i, lin)] = [d]
    for ln in ("layer_norm1", "layer_norm2"):
        shapes["%s.%d.weight" % (ln, i)] = [d]; shapes["%s.%d.bias" % (ln, i)] = [d]
    shapes["ffns.%d.lin1.weight" % i] = [h, d]; shapes["ffns.%d.lin1.bias" % i] = [h]
    shapes["ffns.%d.lin2.weight" % i] = [d, h]; shapes["ffns.%d.lin2.bias" % i] = [d]
rng = random.Random(1234)
header, blobs, offset = {}, [], 0
for name, shape in shapes.items():
    n = 1
    for s in shape:
        n *= s
    one = name.startswith("layer_norm") and name.endswith(".weight")
    values = [1.0 + rng.uniform(-0.1, 0.1) if one else rng.uniform(-0.2, 0.2) for _ in range(n)]
    blob = struct.pack("<%df" % n, *values)
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob); offset += len(blob)
header["__metadata__"] = {"format": "pt"}
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text))); f.write(text)
    for blob in blobs:
        f.write(blob)
