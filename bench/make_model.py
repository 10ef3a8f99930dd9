#!/usr/bin/env python3
"""Builds bench/resnet.onnx: a ResNet-like image classifier with random weights, for benchmarks.

    pixels float32 [batch, 3, 224, 224] -> logits float32 [batch, 1000]

The graph is what an exported torchvision ResNet looks like after inference-time folding: a 7x7/2
stem convolution and a 3x3/2 max-pool, four stages of basic residual blocks (3x3 conv, ReLU, 3x3
conv, add the shortcut, ReLU; the first block of stages 2-4 halves the resolution and uses a 1x1/2
convolution on the shortcut), global average pooling and a fully connected layer. BatchNorm is
folded into each convolution's weights and bias, as exporters do for inference, so there is no
BatchNormalization node. Weights are random (He initialisation, fixed seed): the benchmark needs a
model of realistic cost and shape, not a trained one, and the result is identical on every machine.

The default widths (64, 128, 192, 256) and blocks (2, 2, 2, 2) are ResNet-18 with its last two
stages narrowed: 1.35 GMAC (2.7 GFLOPs) per image, 75% of ResNet-18's compute, with 4.4 M
parameters (17 MiB) instead of 11.7 M (45 MiB), since the compute sits in the early,
high-resolution stages and the parameters in the late ones. On an AMD EPYC core with ONNX Runtime
1.31.1 it costs about 25-30 ms of CPU per image, so about 15 ms per image on 2 threads: the model
dominates a decode/resize/normalise pipeline without making a 5,000-image run take long.
ResNet-18 itself is --widths 64 128 256 512.

    .venv/bin/python bench/make_model.py [--out bench/resnet.onnx] [--widths 32 64 128 256]
        [--blocks 2 2 2 2] [--classes 1000] [--seed 0]
"""
import argparse
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.count = 0
        self.macs = 0
        self.params = 0

    def name(self, kind):
        self.count += 1
        return f"{kind}_{self.count}"

    def weight(self, name, array):
        array = array.astype(np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        self.params += array.size
        return name

    def conv(self, x, cin, cout, k, stride, hw, gain=1.0):
        """Conv with BatchNorm folded in: He-initialised weights (times `gain`), a small bias."""
        n = self.name("conv")
        std = gain * np.sqrt(2.0 / (cin * k * k))
        w = self.weight(n + ".weight", self.rng.normal(0, std, size=(cout, cin, k, k)))
        b = self.weight(n + ".bias", self.rng.normal(0, 0.01, size=(cout,)))
        pad = k // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, w, b], [n], name=n, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4))
        out_hw = (hw + 2 * pad - k) // stride + 1
        self.macs += cout * cin * k * k * out_hw * out_hw
        return n, out_hw

    def op(self, kind, inputs, **attrs):
        n = self.name(kind.lower())
        self.nodes.append(helper.make_node(kind, inputs, [n], name=n, **attrs))
        return n

    def block(self, x, cin, cout, stride, hw):
        """A basic residual block. The second conv's gain of 0.5 keeps activations bounded over depth
        (a trained network's last BN in a block does the same), so logits stay finite."""
        y, out_hw = self.conv(x, cin, cout, 3, stride, hw)
        y = self.op("Relu", [y])
        y, _ = self.conv(y, cout, cout, 3, 1, out_hw, gain=0.5)
        shortcut = x
        if stride != 1 or cin != cout:
            shortcut, _ = self.conv(x, cin, cout, 1, stride, hw)
        return self.op("Relu", [self.op("Add", [y, shortcut])]), out_hw


def build(widths, blocks, classes, seed, size=224):
    b = Builder(seed)
    x, hw = b.conv("pixels", 3, widths[0], 7, 2, size)
    x = b.op("Relu", [x])
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    hw = (hw + 2 - 3) // 2 + 1
    cin = widths[0]
    for stage, (width, count) in enumerate(zip(widths, blocks)):
        for i in range(count):
            x, hw = b.block(x, cin, width, 2 if (i == 0 and stage > 0) else 1, hw)
            cin = width
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    w = b.weight("fc.weight", b.rng.normal(0, np.sqrt(1.0 / cin), size=(classes, cin)))
    bias = b.weight("fc.bias", np.zeros(classes))
    b.nodes.append(helper.make_node("Gemm", [x, w, bias], ["logits"], name="fc", transB=1))
    b.macs += cin * classes

    graph = helper.make_graph(
        b.nodes, "resnet_bench",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="pipe bench/make_model.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model, b.macs, b.params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "resnet.onnx"))
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 192, 256])
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 2, 2, 2])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if len(args.widths) != len(args.blocks):
        ap.error("--widths and --blocks need the same number of stages")

    model, macs, params = build(args.widths, args.blocks, args.classes, args.seed)
    onnx.save(model, args.out)
    print(f"make_model: {args.out}: widths {args.widths}, blocks {args.blocks}, {macs / 1e9:.2f} GMAC "
          f"({2 * macs / 1e9:.2f} GFLOPs) per image, {params / 1e6:.2f} M parameters, "
          f"{os.path.getsize(args.out) / 2**20:.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
