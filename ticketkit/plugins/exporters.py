"""The built-in `ticketkit export` formats, registered like any third party's would be.

The writers live in `ticketkit.artifacts.export` (named here as strings, so listing plugins
imports no torch); `needs` lets the export say the missing extra before the ticket is read.
"""

from __future__ import annotations

from ticketkit import ExporterSpec, hookimpl

_HERE = "ticketkit.artifacts.export"
ONNX = ("onnx", "onnxruntime", "onnxscript")


@hookimpl
def ticketkit_register_exporters(register):
    register(
        ExporterSpec(
            name="dense",
            summary="safetensors state_dict under the arch's own names",
            factory=f"{_HERE}:_dense",
        )
    )
    register(
        ExporterSpec(
            name="onnx",
            summary="one ONNX file, checked in onnxruntime (--structured: channels removed)",
            factory=f"{_HERE}:_onnx",
            needs=ONNX,
            hint="pip install 'ticketkit[onnx]'",
        )
    )
    register(
        ExporterSpec(
            name="pt2",
            summary="torch.export program with a dynamic batch dimension",
            factory=f"{_HERE}:_pt2",
        )
    )
    register(
        ExporterSpec(
            name="structured",
            summary="pt2 with the ticket's empty channels removed (torch-pruning DepGraph)",
            factory=f"{_HERE}:_pt2",
            needs=("torch_pruning",),
            hint="pip install 'ticketkit[structured]'",
            structured=True,
        )
    )
