#!/usr/bin/env python3
"""Loads a safetensors file with the reference `safetensors` package and prints, as one JSON
object, every tensor's dtype, shape and float64 sum, plus the metadata. test_safetensors compares
this with what the C++ writer put in. BF16 is decoded by hand because numpy has no bfloat16."""
import json
import sys

import numpy as np
import safetensors
from safetensors import safe_open

NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
         "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
         "U8": np.uint8, "BOOL": np.bool_}

path = sys.argv[1]
with open(path, "rb") as f:
    tensors = safetensors.deserialize(f.read())  # the Rust library's own validation
with safe_open(path, framework="numpy") as f:
    metadata = f.metadata() or {}

out = {"tensors": {}, "metadata": metadata}
for name, t in tensors:
    raw = bytes(t["data"])
    if t["dtype"] == "BF16":
        values = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        values = np.frombuffer(raw, dtype=np.dtype(NUMPY[t["dtype"]]).newbyteorder("<"))
    out["tensors"][name] = {"dtype": t["dtype"], "shape": list(t["shape"]),
                            "sum": float(values.astype(np.float64).sum())}
print(json.dumps(out))
