"""The graph-file source: a deployed classifier read as ONNX (``onnx_*``, onnx's own tools)
or OpenVINO IR (``ir_*``, the OpenVINO API), cut without torch; what both halves share
(:mod:`.file_cut`, :mod:`.layouts`) and its export pipeline (:mod:`.pipeline`)."""
