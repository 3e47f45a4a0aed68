"""The speaker model's LSTM layers as an ONNX graph, for onnxruntime (a dependency already,
through faster-whisper), which runs an LSTM several times faster than numpy can step one.

The graph is written here as the protobuf bytes of an ONNX ``ModelProto``, with no ``onnx``
package: three ``LSTM`` nodes (opset 17), each layer's output squeezed into the next, the
weights as initializers. Its one input is ``mels`` (frames, batch, N_MELS); its one output
``hidden`` (1, batch, HIDDEN) is the last layer's final hidden state.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

OPSET = 17
IR_VERSION = 8
INPUT = "mels"
OUTPUT = "hidden"
_FLOAT, _INT64 = 1, 7  # TensorProto.DataType
_INT = 2  # AttributeProto.AttributeType


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _number(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _bytes(field: int, value: bytes | str) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def _tensor(name: str, array: npt.NDArray[np.float32] | npt.NDArray[np.int64]) -> bytes:
    kind = _FLOAT if array.dtype == np.float32 else _INT64
    dims = b"".join(_number(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return dims + _number(2, kind) + _bytes(8, name) + _bytes(9, raw)


def _node(op: str, inputs: list[str], outputs: list[str], **ints: int) -> bytes:
    attributes = b"".join(
        _bytes(5, _bytes(1, name) + _number(3, value) + _number(20, _INT))
        for name, value in ints.items()
    )
    wired = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    return wired + _bytes(4, op) + attributes


def _value(name: str, dims: list[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _number(1, d) if isinstance(d, int) else _bytes(2, d)) for d in dims)
    tensor = _number(1, _FLOAT) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor))


def _gates(weights: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """PyTorch's gate order (input, forget, cell, output) as ONNX's (input, output, forget,
    cell), along the first axis."""
    i, f, g, o = np.split(weights, 4, axis=0)
    return np.concatenate([i, o, f, g], axis=0)


def lstm_model(state: dict[str, npt.NDArray[np.float32]], layers: int, hidden: int) -> bytes:
    """The serialized ONNX model of the checkpoint's ``layers`` LSTM layers."""
    nodes, weights = [], []
    source = INPUT
    for layer in range(layers):
        w, r, b = (f"{name}{layer}" for name in ("W", "R", "B"))
        biases = [state[f"lstm.bias_ih_l{layer}"], state[f"lstm.bias_hh_l{layer}"]]
        weights += [
            _tensor(w, _gates(state[f"lstm.weight_ih_l{layer}"])[None]),
            _tensor(r, _gates(state[f"lstm.weight_hh_l{layer}"])[None]),
            _tensor(b, np.concatenate([_gates(x) for x in biases])[None]),
        ]
        last = layer == layers - 1
        outputs = ["", OUTPUT] if last else [f"Y{layer}"]
        nodes.append(_node("LSTM", [source, w, r, b], outputs, hidden_size=hidden))
        if not last:
            source = f"X{layer + 1}"
            nodes.append(_node("Squeeze", [f"Y{layer}", "axis1"], [source]))
    weights.append(_tensor("axis1", np.array([1], dtype=np.int64)))
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "voice_encoder")
        + b"".join(_bytes(5, t) for t in weights)
        + _bytes(11, _value(INPUT, ["frames", "batch", int(state["lstm.weight_ih_l0"].shape[1])]))
        + _bytes(12, _value(OUTPUT, [1, "batch", hidden]))
    )
    opset = _bytes(1, "") + _number(2, OPSET)
    return _number(1, IR_VERSION) + _bytes(8, opset) + _bytes(7, graph)
