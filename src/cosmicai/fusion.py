"""Graph rewrites of an exported model that ONNX Runtime's own optimiser does not make.

``fuse_attention`` replaces each ViT block's self-attention — as torch's exporter writes it
(QKV projection, reshape, transpose, three gathers, the scaled dot product of
``scaled_dot_product_attention``, softmax, transpose back, reshape) — by one ``Attention``
node of ONNX Runtime's ``com.microsoft`` domain. ORT's CPU kernel does the QKV projection and
the per-head products in one pass, without materialising the transposed copies, and its
quantizer turns it into ``QAttention`` (8-bit QKV projection). On AstroMAE the gain was small,
within the machine's drift (docs/astromae.md). Neither ORT's session optimiser nor its
transformers optimiser recognises this exporter's pattern, hence the rewrite.

The rewrite is by structure checked, not assumed: a block is fused only if its attention
subgraph is closed — fed only by the block's input, weights and constants, and read only by
the output projection — its QKV weight is a ``[D, 3D]`` initializer with a ``[3D]`` bias, and
it holds exactly one Softmax. Callers compare the fused model's outputs with the original's
(``cosmicai model export`` does, against torch).

``onnx`` is imported inside the functions: the worker path never needs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cosmicai.exceptions import ModelError

if TYPE_CHECKING:
    import onnx

#: Where torch's exporter names a ViT block's attention: ``…/attn/qkv/MatMul`` etc.
_QKV = re.compile(r"^(?P<prefix>.*/attn/)qkv/MatMul$")
MS_DOMAIN = "com.microsoft"


def fuse_attention(model_bytes: bytes, heads: int) -> tuple[bytes, int]:
    """``model_bytes`` with every recognised attention block fused; (bytes, blocks fused)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    fused = fuse_attention_proto(model, heads)
    return (model.SerializeToString() if fused else model_bytes), fused


def fuse_attention_proto(model: onnx.ModelProto, heads: int) -> int:
    """Fuse in place; return how many blocks were fused (0 leaves ``model`` untouched)."""
    from onnx import helper, numpy_helper

    if heads < 1:
        raise ModelError(f"attention heads must be ≥ 1, got {heads}")
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}

    replacements: dict[int, onnx.NodeProto] = {}  # id(proj MatMul) → Attention to put before
    removed: set[int] = set()
    for node in graph.node:
        match = _QKV.match(node.name)
        if match is None:
            continue
        prefix = match["prefix"]
        block = [
            n
            for n in graph.node
            if n.name.startswith(prefix) and not n.name.startswith(prefix + "proj/")
        ]
        proj = next((n for n in graph.node if n.name == prefix + "proj/MatMul"), None)
        plan = _plan(node, block, proj, initializers, constants, producer, consumers)
        if plan is None or any(o in graph_outputs for n in block for o in n.output):
            continue
        x, weight, bias, out = plan
        dim = numpy_helper.to_array(initializers[weight]).shape[0]
        if dim % heads:
            raise ModelError(f"attention width {dim} is not divisible by {heads} heads")
        attention = helper.make_node(
            "Attention",
            [x, weight, bias],
            [out],
            name=prefix + "Attention",
            domain=MS_DOMAIN,
            num_heads=heads,
        )
        assert proj is not None  # _plan returned a plan
        replacements[id(proj)] = attention
        removed.update(id(n) for n in block)
    if not replacements:
        return 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if id(node) in replacements:
            nodes.append(replacements[id(node)])
        if id(node) not in removed:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(_live(nodes, graph_outputs))
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(replacements)


def _plan(
    qkv: onnx.NodeProto,
    block: list[onnx.NodeProto],
    proj: onnx.NodeProto | None,
    initializers: dict[str, onnx.TensorProto],
    constants: set[str],
    producer: dict[str, onnx.NodeProto],
    consumers: dict[str, list[onnx.NodeProto]],
) -> tuple[str, str, str, str] | None:
    """(input, weight, bias, output) of a closed attention subgraph, else None."""
    if proj is None or len(qkv.input) != 2 or qkv.input[1] not in initializers:
        return None
    x, weight = qkv.input
    dims = list(initializers[weight].dims)
    if len(dims) != 2 or dims[1] != 3 * dims[0]:
        return None
    adds = [n for n in consumers.get(qkv.output[0], []) if n.op_type == "Add"]
    if len(adds) != 1:
        return None
    bias = next((i for i in adds[0].input if i != qkv.output[0]), None)
    if bias is None or bias not in initializers or list(initializers[bias].dims) != [dims[1]]:
        return None
    if sum(n.op_type == "Softmax" for n in block) != 1:
        return None
    inside = {id(n) for n in block}
    out = proj.input[0]
    if out not in producer or id(producer[out]) not in inside:
        return None
    produced = {o for n in block for o in n.output}
    for n in block:
        for name in n.input:
            if not name or name in produced:
                continue
            if name != x and name not in initializers and name not in constants:
                return None  # fed by something other than the block input or constants
        for o in n.output:
            for reader in consumers.get(o, []):
                if id(reader) not in inside and not (reader is proj and o == out):
                    return None  # something outside reads an intermediate
    return x, weight, bias, out


def _live(nodes: Iterable[onnx.NodeProto], graph_outputs: set[str]) -> list[onnx.NodeProto]:
    """``nodes`` without those whose outputs nobody reads (the exporter's shape arithmetic)."""
    kept = list(nodes)
    while True:
        read = {i for n in kept for i in n.input} | graph_outputs
        alive = [n for n in kept if any(o in read for o in n.output)]
        if len(alive) == len(kept):
            return kept
        kept = alive
