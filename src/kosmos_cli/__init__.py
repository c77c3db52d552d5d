"""kosmos25: read text-heavy images and PDFs with Microsoft's KOSMOS-2.5.

The Python API, for scripts:

    import kosmos_cli
    reader = kosmos_cli.Reader(model="microsoft/kosmos-2.5", device="auto")
    doc = reader.ocr("receipt.png")
    kosmos_cli.write(doc, "out/receipt.pdf")

Names are imported on first use, so `import kosmos_cli` (and `kosmos25 --help`) stays
instant and loads no torch.
"""

from __future__ import annotations

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "Reader": "api",
    "write": "api",
    "KosmosError": "errors",
    "InputError": "errors",
    "ModelUnavailable": "errors",
    "OutputFailed": "errors",
    "UsageError": "errors",
    "ExitCode": "errors",
    "DocumentResult": "results",
    "PageResult": "results",
    "Line": "results",
    "BBox": "results",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
