#!/usr/bin/env python3
"""Golden cases (tests/golden/*/cases.jsonl) as KServe v2 infer bodies, and
the gateway's KServe responses back as xlm-infer result lines, so that
compare_golden.py checks them against HuggingFace's outputs.

  kserve_golden.py requests CASES DIR    DIR/NNNN.json, one body per case
  kserve_golden.py results CASES DIR OUT DIR/NNNN.out (responses) -> OUT
"""
import json
import os
import sys


def shape_of(value):
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def flat(value):
    if isinstance(value, list):
        for v in value:
            yield from flat(v)
    else:
        yield value


def nest(data, shape):
    if len(shape) <= 1:
        return list(data[: shape[0]]) if shape else data[0]
    step = len(data) // shape[0]
    return [nest(data[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


def requests(cases, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for n, line in enumerate(open(cases)):
        if not line.strip():
            continue
        case = json.loads(line)
        inputs = []
        for name, value in case["inputs"].items():
            inputs.append({
                "name": name,
                "shape": shape_of(value),
                "datatype": "FP32" if name == "p_mask" else "INT64",
                "data": list(flat(value)),
            })
        body = {"id": case["name"], "parameters": {"task": case["head"]}, "inputs": inputs}
        with open(os.path.join(out_dir, "%04d.json" % n), "w") as f:
            json.dump(body, f)


def results(cases, in_dir, out_path):
    with open(out_path, "w") as out:
        for n, line in enumerate(open(cases)):
            if not line.strip():
                continue
            name = json.loads(line)["name"]
            response = json.load(open(os.path.join(in_dir, "%04d.out" % n)))
            if "error" in response:
                out.write(json.dumps({"name": name, "error": {"code": "http", "message": response["error"]}}) + "\n")
                continue
            if response.get("id") != name:
                raise SystemExit(f"kserve_golden: response {n} has id {response.get('id')!r}, sent {name!r}")
            outputs = {o["name"]: nest(o["data"], o["shape"]) for o in response["outputs"]}
            out.write(json.dumps({"name": name, "outputs": outputs}) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "requests":
        requests(sys.argv[2], sys.argv[3])
    else:
        results(sys.argv[2], sys.argv[3], sys.argv[4])
