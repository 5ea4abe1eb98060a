#!/usr/bin/env python3
"""Writes fuzz_h5_attrs seeds from tf_model.h5 files: one per global heap
collection (where HDF5 keeps the variable-length layer and weight names),
in the input form fuzz_h5_attrs.c describes. The collection is copied
behind 8 bytes of padding (address 0 is a null string), every object gets
its reference, and the names it holds become the names section (a name
without '/' as a layer). Beside each whole collection, one cut to its first
CUT objects: small inputs keep the runs fast.

usage: make_h5_attrs_seeds.py OUT_DIR FILE.h5...
"""
import os
import struct
import sys

PAD = 8
CUT = 6


def collections(data, sizeof_size):
    at = data.find(b"GCOL")
    while at >= 0:
        if data[at + 4] == 1:
            size = int.from_bytes(data[at + 8:at + 8 + sizeof_size], "little")
            if 8 + sizeof_size <= size <= len(data) - at:
                yield data[at:at + size]
        at = data.find(b"GCOL", at + 4)


def objects(heap, sizeof_size):
    at, head = 8 + sizeof_size, 8 + sizeof_size
    while at + head <= len(heap):
        index = int.from_bytes(heap[at:at + 2], "little")
        length = int.from_bytes(heap[at + 8:at + 8 + sizeof_size], "little")
        if index == 0:
            break
        yield index, heap[at + head:at + head + length]
        at += head + ((length + 7) & ~7)


def cut(heap, sizeof_size, keep):
    """The collection holding only its first keep objects."""
    at, head = 8 + sizeof_size, 8 + sizeof_size
    for _ in range(keep):
        length = int.from_bytes(heap[at + 8:at + 8 + sizeof_size], "little")
        if int.from_bytes(heap[at:at + 2], "little") == 0:
            break
        at += head + ((length + 7) & ~7)
    return heap[:8] + at.to_bytes(sizeof_size, "little") + heap[8 + sizeof_size:at]


def seed(heap, sizeof_addr, sizeof_size):
    refs, lines = b"", []
    for index, text in objects(heap, sizeof_size):
        refs += struct.pack("<I", len(text)) + PAD.to_bytes(sizeof_addr, "little")
        refs += struct.pack("<I", index)
        name = text.decode("utf-8", "replace")
        lines.append(name if "/" in name else "@" + name)
    names = "\n".join(lines).encode()
    head = bytes([sizeof_addr - 1, sizeof_size - 1, 0, 63])
    head += struct.pack("<HH", len(refs), len(names))
    return head + refs + names + bytes(PAD) + heap


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for path in sys.argv[2:]:
        data = open(path, "rb").read()
        # Superblock versions 0 and 1: the sizes are bytes 13 and 14.
        sizeof_addr, sizeof_size = data[13], data[14]
        label = os.path.basename(os.path.dirname(path))
        for n, heap in enumerate(collections(data, sizeof_size)):
            for name, whole in (("%s-%d" % (label, n), heap),
                                ("%s-%d-cut" % (label, n), cut(heap, sizeof_size, CUT))):
                body = seed(whole, sizeof_addr, sizeof_size)
                if len(body) <= 65536:
                    with open(os.path.join(out, name), "wb") as f:
                        f.write(body)


if __name__ == "__main__":
    main()
