"""Triton kernels, one file per op. Importing this package registers each as a custom op
(`torch.ops.pipo.<op>_triton`) through torch.library.triton_op, so torch.compile sees the kernels.
The ops with a Triton twin are those of pipo_kernels._registry.TRITON_NAMES, one module each.

On a machine without a GPU the kernels run under Triton's interpreter when TRITON_INTERPRET=1 is
set before `import triton` (slow; meant for tests)."""

import importlib

from .._registry import TRITON_NAMES

for _name in TRITON_NAMES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = list(TRITON_NAMES)
