"""The command line's options, each defined once (type, help text, help panel) and shared
by the commands (`commands.py`, `training.py`) that take it. Imports no torch."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..outputs.formats import MD_FORMATS, OCR_FORMATS

INPUTS, OUTPUT, MODEL, SPEED, RAY = "Inputs", "Output", "Model", "Speed", "Ray"
EVAL, TRAINING = "Evaluation", "Training"

OcrFormat = Enum("OcrFormat", {name: name for name in OCR_FORMATS}, type=str)
MdFormat = Enum("MdFormat", {name: name for name in MD_FORMATS}, type=str)


class Dtype(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


class Task(str, Enum):
    ocr = "ocr"
    md = "md"


class Method(str, Enum):
    lora = "lora"
    full = "full"


class Batching(str, Enum):
    continuous = "continuous"
    static = "static"


class Attn(str, Enum):
    sdpa = "sdpa"
    eager = "eager"
    flash_attention_2 = "flash_attention_2"


def _flag(*names: str, help: str, panel: str):  # noqa: A002 - typer's own keyword
    # An empty metavar: a flag takes no value, so none is shown.
    return typer.Option(*names, help=help, rich_help_panel=panel, metavar="")


Paths = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="PATH...", show_default=False,
                   help="Images, PDFs or folders (walked recursively); '-' reads one file from stdin."),  # fmt: skip
]
FilesFrom = Annotated[
    Optional[str],
    typer.Option("--files-from", metavar="FILE", rich_help_panel=INPUTS,
                 help="Read input paths from FILE ('-': stdin), one per line."),  # fmt: skip
]
NulSeparated = Annotated[bool, _flag("-0", "--null", help="With --files-from: paths are NUL-separated.", panel=INPUTS)]
Pages = Annotated[
    Optional[str],
    typer.Option(metavar="LIST", rich_help_panel=INPUTS, help="Pages to read, 1-based, e.g. 1-3,7. Default: all."),
]
Dpi = Annotated[int, typer.Option(min=10, max=2400, metavar="N", rich_help_panel=INPUTS, help="Resolution for rendering PDF pages.")]
Password = Annotated[Optional[str], typer.Option(metavar="TEXT", rich_help_panel=INPUTS, help="Password for encrypted PDFs.")]
MaxPixels = Annotated[
    int, typer.Option(min=1, metavar="N", rich_help_panel=INPUTS, help="Refuse images and rendered pages larger than this.")
]
Output = Annotated[
    Optional[Path],
    typer.Option("--output", "-o", metavar="DIR", rich_help_panel=OUTPUT,
                 help="Folder for one output file per input (sub-folders mirrored). Default: stdout."),  # fmt: skip
]
ImageDpi = Annotated[
    int,
    typer.Option(min=10, max=2400, metavar="N", rich_help_panel=OUTPUT,
                 help="--format pdf: resolution of images that do not state their own."),  # fmt: skip
]
Draw = Annotated[
    Optional[Path],
    typer.Option(metavar="DIR", rich_help_panel=OUTPUT, help="Save each page as a PNG with its boxes drawn, in DIR."),
]
Overwrite = Annotated[bool, _flag("--overwrite", help="Redo inputs whose output exists (default: skip them).", panel=OUTPUT)]
Quiet = Annotated[bool, _flag("--quiet", "-q", help="Print errors only.", panel=OUTPUT)]
Verbose = Annotated[bool, _flag("--verbose", "-v", help="Also print warnings of torch/transformers.", panel=OUTPUT)]
Model = Annotated[
    Optional[str],
    typer.Option(metavar="ID|DIR", rich_help_panel=MODEL,
                 help="Hub id or local folder. Default: $KOSMOS25_MODEL or microsoft/kosmos-2.5."),  # fmt: skip
]
Revision = Annotated[Optional[str], typer.Option(metavar="REV", rich_help_panel=MODEL, help="Hub branch, tag or commit.")]
Device = Annotated[
    str, typer.Option(metavar="DEV", rich_help_panel=MODEL, help="auto, cpu, cuda, cuda:N or mps (auto: cuda, mps, cpu).")
]
DtypeOption = Annotated[
    Dtype, typer.Option(rich_help_panel=MODEL, help="auto: bfloat16 on CUDA and on CPUs with bf16 instructions.")
]
AttnOption = Annotated[
    Attn, typer.Option(rich_help_panel=MODEL, help="eager: transformers' own code, without kosmos25's speed-ups.")
]
BatchSize = Annotated[
    Optional[int],
    typer.Option(min=1, metavar="N", rich_help_panel=SPEED, help="Pages decoding together. Default: from free memory (at most 12 on CPU, 16 on CUDA)."),
]
MaxNewTokens = Annotated[
    int, typer.Option(min=1, metavar="N", rich_help_panel=SPEED, help="Most tokens per page; more is marked truncated.")
]
MaxPatches = Annotated[
    Optional[int],
    typer.Option(min=16, metavar="N", rich_help_panel=SPEED, help="Image patches per page (default 4096): fewer is faster."),
]
BatchingOption = Annotated[
    Batching,
    typer.Option(rich_help_panel=SPEED, help="continuous: a finished page's slot takes the next page at once."),
]
CompileOption = Annotated[
    bool,
    _flag("--compile", panel=SPEED,
          help="Compile the decoding steps (torch.compile): 1.5x faster steps on a GPU after a minute or more "
               "of compiling, so for long runs; no gain on CPU."),  # fmt: skip
]

Ray = Annotated[
    Optional[str],
    typer.Option("--ray", metavar="[ADDRESS]", rich_help_panel=RAY, show_default=False,
                 help="Run on Ray: alone, $RAY_ADDRESS or a local instance; auto: the cluster on this machine; "
                      "HOST:PORT or ray://HOST:PORT."),  # fmt: skip
]
Workers = Annotated[
    Optional[int],
    typer.Option(min=1, metavar="N", rich_help_panel=RAY,
                 help="With --ray: workers, each loading the model once. Default: one per GPU, else a few."),  # fmt: skip
]
PagesPerTask = Annotated[
    int, typer.Option(min=1, metavar="N", rich_help_panel=RAY, help="With --ray: a long PDF is shared out N pages at a time.")
]
GpusPerWorker = Annotated[
    float, typer.Option(min=0.0, metavar="X", rich_help_panel=RAY, help="With --ray: GPUs for each worker (GPU clusters).")
]
