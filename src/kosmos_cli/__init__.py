"""kosmos25: read text-heavy images and PDFs with Microsoft's KOSMOS-2.5."""

__version__ = "0.1.0"
