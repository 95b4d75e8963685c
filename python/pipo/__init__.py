"""pipo: the reference PIPO model and generation engine, built on pipo_kernels' ops."""

__version__ = "0.1.0"
