"""Classifier graph files built in the tests: with onnx's helper API (no PyTorch) or torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SIZE = 16
CLASSES = 5
# Tensors of the tiny graph, in order; "c2" is bypassed by the skip from "r1": not a valid cut.
TINY_CUTS = ["c1", "r1", "a", "r2", "pool"]


def tiny_classifier(path: Path, layout: str = "NCHW", softmax: bool = False,
                    second_input: bool = False, seed: int = 0, dynamic_size: bool = False,
                    batch_coupled: bool = False, constant: bool = False) -> Path:
    """conv-relu, residual conv block, max-pool (8x8x8), GAP, linear; written with onnx.helper.

    The NHWC variant takes (N, H, W, 3) and transposes first; its weights equal the NCHW's.
    ``dynamic_size``: H and W are symbolic. ``batch_coupled``: the input is first divided by
    its largest magnitude over the whole batch. ``constant``: the linear layer's weights are
    zero, so the scores are its bias whatever the image.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8),
             init("wfc", CLASSES, 8), init("bfc", CLASSES)]
    if constant:
        inits[4] = numpy_helper.from_array(np.zeros((CLASSES, 8), np.float32), "wfc")
    h, w = ("H", "W") if dynamic_size else (SIZE, SIZE)
    nodes = []
    first = "image"
    if batch_coupled:
        nodes += [helper.make_node("Abs", ["image"], ["magnitude"]),
                  helper.make_node("ReduceMax", ["magnitude"], ["batch_max"], keepdims=1),
                  helper.make_node("Div", ["image", "batch_max"], ["scaled"])]
        first = "scaled"
    if layout == "NHWC":
        shape_in = ["N", h, w, 3]
        nodes.append(helper.make_node("Transpose", [first], ["x"], perm=[0, 3, 1, 2]))
        first = "x"
    else:
        shape_in = ["N", 3, h, w]
    out = "logits" if softmax or second_input else "scores"
    nodes += [
        helper.make_node("Conv", [first, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["pool"], kernel_shape=[2, 2], strides=[2, 2],
                         name="maxpool"),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], [out], transB=1, name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape_in)]
    if softmax:
        nodes.append(helper.make_node("Softmax", [out], ["scores"], axis=1, name="softmax"))
    if second_input:
        inputs.append(helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["N", CLASSES]))
        nodes.append(helper.make_node("Add", [out, "bias"], ["scores"], name="add_bias"))
    graph = helper.make_graph(
        nodes, "tiny", inputs,
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnx.helper")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def vector_classifier(path: Path) -> Path:
    """A classifier over (N, 10) vectors: not an image model."""
    w = numpy_helper.from_array(np.ones((10, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["v", "w"], ["scores"])], "vec",
        [helper.make_tensor_value_info("v", TensorProto.FLOAT, ["N", 10])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def to_ir(onnx_path: Path) -> Path:
    """The same graph as OpenVINO IR (f32 weights) next to it."""
    import openvino as ov

    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


def native_ir(path: Path, softmax: bool = True) -> Path:
    """A classifier built with OpenVINO's opset API (never ONNX nor PyTorch), saved as IR."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(3)
    image = ops.parameter([1, 3, SIZE, SIZE], ov.Type.f32, name="pixels")
    w1 = ops.constant(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) / 5)
    conv = ops.convolution(image, w1, [2, 2], [1, 1], [1, 1], [1, 1], name="conv")
    relu = ops.relu(conv, name="relu")
    gap = ops.reduce_mean(relu, ops.constant(np.array([2, 3], np.int64)), True, name="gap")
    flat = ops.reshape(gap, ops.constant(np.array([-1, 6], np.int64)), False, name="flat")
    fc = ops.matmul(flat, ops.constant(rng.standard_normal((6, CLASSES)).astype(np.float32)),
                    False, False, name="fc")
    out = ops.softmax(fc, 1, name="prob") if softmax else fc
    ov.save_model(ov.Model([out], [image], "native"), str(path), compress_to_fp16=False)
    return path


def quantize(onnx_path: Path, out: Path, inputs: list[np.ndarray]) -> Path:
    """Static INT8 (QDQ) quantisation with ONNX Runtime, calibrated on ``inputs``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    name = onnx.load(str(onnx_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: x} for x in inputs])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(onnx_path), str(out), Reader(), activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    return out


def resnet18_onnx(weights: Path) -> Path:
    """torchvision resnet18 with the given state dict, exported whole (TorchScript exporter).

    Written once next to ``weights``, so test modules share it.
    """
    import warnings

    import torch
    import torchvision

    path = weights.with_name("resnet18_whole.onnx")
    if path.is_file():
        return path
    model = torchvision.models.resnet18(weights=None).eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 224, 224),), str(path), dynamo=False,
                          opset_version=17, input_names=["data"], output_names=["logits"],
                          dynamic_axes={"data": {0: "n"}, "logits": {0: "n"}})
    return path


def wide_classifier(path: Path, size: int = 64, channels: int = 4) -> Path:
    """conv (stride 1) → relu → GAP → linear: a size×size feature map of few channels, so
    N = size² masked positions make the N² parts (masks, pooling matrix) the large ones."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w", rng.standard_normal((channels, 3, 3, 3)) / 5), ("b", rng.standard_normal(channels)),
        ("wfc", rng.standard_normal((CLASSES, channels))), ("bfc", rng.standard_normal(CLASSES)))]
    nodes = [helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["gap"], name="gap"),
             helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
             helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["scores"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "wide", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                      ["N", 3, size, size])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def channels_last_classifier(path: Path, seed: int = 0) -> Path:
    """A tf2onnx/Keras-style graph: NHWC input → Transpose → conv-relu ×2 (16 x 8 x 8) →
    Transpose back to NHWC → ReduceMean over axes 1, 2 → MatMul + Add.

    Its last 4-D tensor is channels-last (N, 8, 8, 16); the NCHW map is the second ReLU's.
    """
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16),
             init("dense", 16, CLASSES), init("dense_bias", CLASSES)]
    nodes = [
        helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1],
                         strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Transpose", ["r2"], ["nhwc"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("ReduceMean", ["nhwc"], ["pooled"], axes=[1, 2], keepdims=0,
                         name="global_average_pooling2d"),
        helper.make_node("MatMul", ["pooled", "dense"], ["mm"], name="dense/MatMul"),
        helper.make_node("Add", ["mm", "dense_bias"], ["scores"], name="dense/BiasAdd"),
    ]
    graph = helper.make_graph(
        nodes, "keras_style",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="onnx.helper")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def native_ir_channels_last(path: Path) -> Path:
    """An IR built with OpenVINO's opset API whose head is channels-last: conv-relu (6 x 8 x 8)
    → Transpose to N x h x w x C → ReduceMean over axes 1, 2 → MatMul."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(5)
    image = ops.parameter([-1, 3, SIZE, SIZE], ov.Type.f32, name="pixels")
    w1 = ops.constant(rng.standard_normal((6, 3, 3, 3)).astype(np.float32) / 5)
    conv = ops.convolution(image, w1, [2, 2], [1, 1], [1, 1], [1, 1], name="conv")
    relu = ops.relu(conv, name="relu")
    nhwc = ops.transpose(relu, ops.constant(np.array([0, 2, 3, 1], np.int64)), name="to_nhwc")
    act = ops.clamp(nhwc, 0.0, 6.0, name="relu6_nhwc")
    gap = ops.reduce_mean(act, ops.constant(np.array([1, 2], np.int64)), False, name="gap")
    fc = ops.matmul(gap, ops.constant(rng.standard_normal((6, CLASSES)).astype(np.float32)),
                    False, False, name="fc")
    ov.save_model(ov.Model([fc], [image], "native_nhwc"), str(path), compress_to_fp16=False)
    return path


def native_ir_repeated_names(path: Path) -> Path:
    """An IR whose two conv-relu blocks carry the same friendly names ("conv", "act"):
    OpenVINO does not keep names unique. The second block halves the map (8 x 8 → 4 x 4)."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(6)
    image = ops.parameter([-1, 3, SIZE, SIZE], ov.Type.f32, name="pixels")
    x = image
    for channels_in in (3, 6):
        w = ops.constant(rng.standard_normal((6, channels_in, 3, 3)).astype(np.float32) / 4)
        x = ops.relu(ops.convolution(x, w, [2, 2], [1, 1], [1, 1], [1, 1], name="conv"),
                     name="act")
    gap = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), True, name="gap")
    flat = ops.reshape(gap, ops.constant(np.array([-1, 6], np.int64)), False, name="flat")
    fc = ops.matmul(flat, ops.constant(rng.standard_normal((6, CLASSES)).astype(np.float32)),
                    False, False, name="fc")
    ov.save_model(ov.Model([fc], [image], "repeated"), str(path), compress_to_fp16=False)
    return path


SOFTMAX_TAILS = ("identity", "reshape", "cast_mul", "unit_axes")


def softmax_tail(path: Path, tail: str) -> Path:
    """The tiny classifier ending ``Softmax → no-op tail → scores``, as converters write it.

    ``identity``: an Identity; ``reshape``: Reshape to (-1, classes) then Flatten; ``cast_mul``:
    a Cast to float then a Mul by 1; ``unit_axes``: the logits reshaped to (N, classes, 1, 1),
    a Softmax over axis 1, then Flatten. Weights equal ``tiny_classifier``'s.
    """
    model = onnx.load(str(tiny_classifier(path, softmax=True)))
    graph = model.graph
    softmax = next(n for n in graph.node if n.op_type == "Softmax")
    softmax.output[0] = "probs"
    make = helper.make_node
    if tail == "identity":
        nodes = [make("Identity", ["probs"], ["scores"], name="identity")]
    elif tail == "reshape":
        graph.initializer.append(numpy_helper.from_array(np.array([-1, CLASSES], np.int64),
                                                         "classes_shape"))
        nodes = [make("Reshape", ["probs", "classes_shape"], ["probs_2d"], name="reshape"),
                 make("Flatten", ["probs_2d"], ["scores"], name="flatten_probs")]
    elif tail == "cast_mul":
        graph.initializer.append(numpy_helper.from_array(np.array(1, np.float32), "one"))
        nodes = [make("Cast", ["probs"], ["probs_f32"], to=TensorProto.FLOAT, name="cast"),
                 make("Mul", ["one", "probs_f32"], ["scores"], name="times_one")]
    elif tail == "unit_axes":
        graph.initializer.append(numpy_helper.from_array(np.array([-1, CLASSES, 1, 1], np.int64),
                                                         "nc11"))
        softmax.input[0] = "logits_nc11"
        nodes = [make("Reshape", ["logits", "nc11"], ["logits_nc11"], name="to_nc11"),
                 make("Flatten", ["probs"], ["scores"], name="flatten_probs")]
        graph.node.insert(list(graph.node).index(softmax), nodes.pop(0))
    else:
        raise ValueError(f"unknown tail {tail!r}")
    graph.node.extend(nodes)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def native_ir_with_tail(path: Path) -> Path:
    """An IR built with OpenVINO's opset API whose Softmax is followed by a no-op tail
    (Reshape, Multiply by 1, Convert to f32), saved as is (no conversion folds it)."""
    import openvino as ov
    import openvino.opset13 as ops

    native = ov.Core().read_model(str(native_ir(path.with_name(f"{path.stem}_plain.xml"))))
    result = native.get_results()[0]
    probs = result.input_value(0)
    shaped = ops.reshape(probs, ops.constant(np.array([-1, CLASSES], np.int64)), False,
                         name="reshape")
    once = ops.multiply(shaped, ops.constant(np.ones((1, CLASSES), np.float32)), name="times_one")
    scores = ops.convert(once, ov.Type.f32, name="to_f32")
    result.input(0).replace_source_output(scores.output(0))
    ov.save_model(native, str(path), compress_to_fp16=False)
    return path


def with_metadata(path: Path, props: dict[str, str]) -> Path:
    """The ONNX file at ``path`` rewritten with ``props`` as its ``metadata_props``."""
    model = onnx.load(str(path))
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def symbolic_channels(path: Path, layout: str = "NCHW") -> Path:
    """The tiny classifier as Hugging Face optimum declares its input: every axis symbolic."""
    model = onnx.load(str(tiny_classifier(path, layout=layout, dynamic_size=True)))
    dim = model.graph.input[0].type.tensor_type.shape.dim[1 if layout == "NCHW" else 3]
    dim.Clear()
    dim.dim_param = "num_channels"
    onnx.save(model, str(path))
    return path


def static_batch_classifier(path: Path, seed: int = 0) -> Path:
    """Ultralytics' default export in small: an attention-like block in ``f`` whose Reshapes
    fix the batch at 1 ((1, 2, 4, 256), softmax over positions, back to (1, 8, 16, 16))."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8),
             init("wfc", CLASSES, 8), init("bfc", CLASSES),
             ints("heads", [1, 2, 4, SIZE * SIZE]), ints("back", [1, 8, SIZE, SIZE])]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "heads"], ["split"], name="attn_view"),
        helper.make_node("Softmax", ["split"], ["attention"], axis=-1),
        helper.make_node(
            "Constant", [], ["back_c"],
            value=numpy_helper.from_array(np.array([1, 8, SIZE, SIZE], np.int64))),
        helper.make_node("Reshape", ["attention", "back_c"], ["merged"], name="attn_back"),
        helper.make_node("Add", ["merged", "r1"], ["mixed"]),
        helper.make_node("Conv", ["mixed", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wfc", "bfc"], ["scores"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "static_batch",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def text_line_classifier(path: Path, seed: int = 0, opset: int = 11) -> Path:
    """A Paddle-made text-line classifier in small: conv stack on a dynamic H x W input, head
    Reshape(pool, Concat(Shape-slice, const)) -> MatMul -> Add -> Softmax -> Identity."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 16, 8, 3, 3), init("b2", 16),
             init("fc_w", 16, 2), init("fc_b", 2), ints("zero", [0]), ints("one", [1]),
             ints("features", [16])]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("HardSigmoid", ["c1"], ["hs"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["c1", "hs"], ["a1"]),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["pool"]),
        helper.make_node("Shape", ["pool"], ["pool_shape"]),
        helper.make_node("Slice", ["pool_shape", "zero", "one"], ["batch_size"]),
        helper.make_node("Concat", ["batch_size", "features"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["pool", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc_w"], ["mm"]),
        helper.make_node("Add", ["mm", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Identity", ["probs"], ["save_infer_model/scale_0.tmp_1"]),
    ]
    graph = helper.make_graph(
        nodes, "text_line_cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["p2o.DynamicDimension.0", 3,
                                                                "p2o.DynamicDimension.1",
                                                                "p2o.DynamicDimension.2"])],
        [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT,
                                       ["p2o.DynamicDimension.3", 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def whole_map_average_pool(path: Path) -> Path:
    """The tiny classifier with its global pool written as AveragePool(8x8) over the 8x8 map
    (PyTorch's ``AvgPool2d(7)`` in a VGG-like head)."""
    model = onnx.load(str(tiny_classifier(path)))
    node = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    node.op_type = "AveragePool"
    node.attribute.extend([helper.make_attribute("kernel_shape", [SIZE // 2, SIZE // 2])])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def batch_dropping_classifier(path: Path, seed: int = 0) -> Path:
    """A TF-converter-style block in ``f``: a Reshape to (2, 4, 256) drops the batch axis and
    one to (1, 8, 16, 16) brings it back at 1, so no batch axis can be freed; ``f`` runs on
    one image at a time only."""
    model = onnx.load(str(static_batch_classifier(path, seed)))
    for init in model.graph.initializer:
        if init.name == "heads":
            init.CopyFrom(numpy_helper.from_array(np.array([2, 4, SIZE * SIZE], np.int64),
                                                  "heads"))
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path
