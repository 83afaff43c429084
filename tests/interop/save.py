#!/usr/bin/env python3
"""Writes, with the reference package (safetensors.numpy.save_file), the tensors that
test_safetensors expects: OUT_DIR/python.safetensors with metadata, and OUT_DIR/plain.safetensors
without, which the C++ writer must reproduce byte for byte."""
import os
import sys

import numpy as np
from safetensors.numpy import save_file

tensors = {
    "f64": (np.arange(6, dtype=np.float64).reshape(2, 3) * 0.25 - 0.5),
    "f32": np.array([1.5, -2.25, 0.375], dtype=np.float32),
    "f16": np.array([1.0, -2.0, 0.5, 65504.0, 2.0 ** -24], dtype=np.float16),
    "i64": np.array([-(2 ** 62), 7, 2 ** 53 + 1], dtype=np.int64),
    "i32": np.array([[1, -2], [3, -4]], dtype=np.int32),
    "u8": np.array([0, 255], dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "scalar": np.array(3.5, dtype=np.float64),
    "empty": np.zeros((0, 4), dtype=np.float32),
}
out = sys.argv[1]
save_file(tensors, os.path.join(out, "python.safetensors"),
          metadata={"format": "python-test", "note": "written by safetensors.numpy"})
save_file(tensors, os.path.join(out, "plain.safetensors"))
