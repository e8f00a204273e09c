"""A pass over an exported ONNX graph that PyTorch's exporters leave undone.

`x[:, c0:c1, a:b:s, c:d:s]` exports as one single-axis `Slice` per indexed
dimension, each a copy in ONNX Runtime: an 8c shift becomes 27 slices where one
multi-axis `Slice` per channel group (9) says the same. `merge_slices` joins
every chain of constant single-axis slices into one node.
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def _const(graph, name: str, producers: dict) -> np.ndarray | None:
    """The value of `name` when it is an initializer or a Constant node's output."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for a in node.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
    return None


def merge_slices(model):
    """Merge chains `Slice(Slice(x, axis a), axis b)` with constant arguments into one Slice.

    The inner slice's output must have no other consumer and the axes must
    differ; the merged node keeps the outer node's output name. Returns `model`
    (changed in place).
    """
    from onnx import helper, numpy_helper

    g = model.graph
    while True:
        producers = {o: n for n in g.node for o in n.output}
        uses = Counter(i for n in g.node for i in n.input)
        uses.update(o.name for o in g.output)
        merged = False
        for outer in g.node:
            if outer.op_type != "Slice" or len(outer.input) < 4:
                continue
            inner = producers.get(outer.input[0])
            if inner is None or inner.op_type != "Slice" or len(inner.input) < 4 \
                    or uses[inner.output[0]] != 1:
                continue
            parts = []
            for node in (inner, outer):
                vals = [_const(g, name, producers) for name in node.input[1:]]
                if any(v is None for v in vals):
                    break
                starts, ends, axes = vals[:3]
                steps = vals[3] if len(vals) > 3 else np.ones_like(starts)
                parts.append((starts, ends, axes, steps))
            if len(parts) != 2 or set(parts[0][2].tolist()) & set(parts[1][2].tolist()):
                continue
            tag = f"{outer.name or outer.output[0]}_merged"
            args = [np.concatenate([p[k] for p in parts]).astype(np.int64) for k in range(4)]
            names = [f"{tag}_{k}" for k in ("starts", "ends", "axes", "steps")]
            g.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip(args, names))
            node = helper.make_node("Slice", [inner.input[0], *names], list(outer.output),
                                    name=tag)
            at = list(g.node).index(outer)
            g.node.remove(outer)
            g.node.insert(at, node)
            g.node.remove(inner)
            merged = True
            break
        if not merged:
            return model
