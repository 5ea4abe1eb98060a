#!/usr/bin/env python3
"""Rewrites the model.safetensors of a checkpoint folder in another weight
format, without torch: the tests' source of torch, legacy-torch and sharded
folders with known contents.

Usage: rewrite_checkpoint.py SRC_DIR OUT_DIR --to FORMAT [--shards N]
  FORMAT: torch         pytorch_model.bin, zip archive (torch >= 1.6)
          torch-legacy  pytorch_model.bin, torch's legacy stream of pickles
          sharded       model-0000i-of-0000N.safetensors + model.safetensors.index.json
          sharded-torch pytorch_model-0000i-of-0000N.bin (zip) + pytorch_model.bin.index.json
Every other file of SRC_DIR is copied. Tensors keep their names and order;
shards split the tensors in order into N runs of about equal bytes."""
import argparse, collections, io, json, os, pickle, shutil, struct, sys, types, zipfile

p = argparse.ArgumentParser()
p.add_argument("src"); p.add_argument("out")
p.add_argument("--to", required=True, choices=["torch", "torch-legacy", "sharded", "sharded-torch"])
p.add_argument("--shards", type=int, default=2)
a = p.parse_args()

def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = collections.OrderedDict()
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        out[name] = (e["dtype"], e["shape"], data[b:end])
    return out

def write_safetensors(path, tensors):
    header, blobs, offset = collections.OrderedDict(), [], 0
    for name, (dtype, shape, blob) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob); offset += len(blob)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text))); f.write(text)
        for blob in blobs:
            f.write(blob)

# Stand-ins for the torch names the pickle refers to, so that Python's own
# pickler writes exactly the globals torch.save writes.
torch = types.ModuleType("torch"); utils = types.ModuleType("torch._utils")
def _rebuild_tensor_v2(*args): raise RuntimeError("stand-in")
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
STORAGE_TYPES = {}
for dtype, cls in (("F32", "FloatStorage"), ("F16", "HalfStorage"), ("BF16", "BFloat16Storage"),
                   ("I64", "LongStorage")):
    t = type(cls, (), {}); t.__module__ = "torch"; t.__qualname__ = cls
    setattr(torch, cls, t); STORAGE_TYPES[dtype] = t
torch._utils = utils
sys.modules["torch"] = torch; sys.modules["torch._utils"] = utils
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}

class Storage:
    def __init__(self, key, dtype, blob):
        self.key, self.dtype, self.blob = key, dtype, blob

class Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape
    def __reduce__(self):
        stride, acc = [], 1
        for s in reversed(self.shape):
            stride.insert(0, acc); acc *= s
        return (_rebuild_tensor_v2, (self.storage, 0, tuple(self.shape), tuple(stride), False,
                                     collections.OrderedDict()))

def state_dict(tensors, legacy):
    sd, storages = collections.OrderedDict(), []
    for i, (name, (dtype, shape, blob)) in enumerate(tensors.items()):
        s = Storage(str(i), dtype, blob); storages.append(s)
        sd[name] = Tensor(s, shape)
    def persistent_id(obj):
        if isinstance(obj, Storage):
            pid = ("storage", STORAGE_TYPES[obj.dtype], obj.key, "cpu", len(obj.blob) // SIZES[obj.dtype])
            return pid + (None,) if legacy else pid
        return None
    buf = io.BytesIO()
    pk = pickle.Pickler(buf, protocol=2); pk.persistent_id = persistent_id
    pk.dump(sd)
    return buf.getvalue(), storages

def write_torch_zip(path, tensors):
    data, storages = state_dict(tensors, False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr("archive/data/" + s.key, s.blob)
        z.writestr("archive/version", "3\n")

def write_torch_legacy(path, tensors):
    data, storages = state_dict(tensors, True)
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950a86a20f9469cfc6c, 1001,
        {"protocol_version": 1001, "little_endian": True,
         "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    keys = sorted(s.key for s in storages)
    by_key = {s.key: s for s in storages}
    with open(path, "wb") as f:
        f.write(head); f.write(data); f.write(pickle.dumps(keys, protocol=2))
        for k in keys:
            s = by_key[k]
            f.write(struct.pack("<q", len(s.blob) // SIZES[s.dtype])); f.write(s.blob)

def split(tensors, n):
    total = sum(len(t[2]) for t in tensors.values())
    shards, cur, size = [], collections.OrderedDict(), 0
    for name, t in tensors.items():
        if cur and size >= total * (len(shards) + 1) / n and len(shards) < n - 1:
            shards.append(cur); cur = collections.OrderedDict()
        cur[name] = t; size += len(t[2])
    shards.append(cur)
    return shards

os.makedirs(a.out, exist_ok=True)
for name in os.listdir(a.src):
    if name not in ("model.safetensors", "pytorch_model.bin") and os.path.isfile(os.path.join(a.src, name)):
        shutil.copyfile(os.path.join(a.src, name), os.path.join(a.out, name))
tensors = read_safetensors(os.path.join(a.src, "model.safetensors"))
if a.to == "torch":
    write_torch_zip(os.path.join(a.out, "pytorch_model.bin"), tensors)
elif a.to == "torch-legacy":
    write_torch_legacy(os.path.join(a.out, "pytorch_model.bin"), tensors)
else:
    stem, ext, writer = (("model", "safetensors", write_safetensors) if a.to == "sharded"
                         else ("pytorch_model", "bin", write_torch_zip))
    shards = split(tensors, a.shards)
    weight_map, total = collections.OrderedDict(), 0
    for i, shard in enumerate(shards):
        fname = "%s-%05d-of-%05d.%s" % (stem, i + 1, len(shards), ext)
        writer(os.path.join(a.out, fname), shard)
        for name, t in shard.items():
            weight_map[name] = fname; total += len(t[2])
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    json.dump(index, open(os.path.join(a.out, "%s.%s.index.json" % (stem, ext)), "w"), indent=2)
