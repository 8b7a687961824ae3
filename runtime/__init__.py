"""How a process of any stage uses its machine; imports nothing of the project.

`keep_freed_memory()` (allocator.py): glibc's malloc keeps the large blocks that CPU batches free,
for the next batch, instead of mapping and zeroing them afresh. The command-line programs of
pipeline/, trainer/ and eval/ call it first; a library import (the HEAR API) does not.
"""

from runtime.allocator import GLIBC, SETTINGS, keep_freed_memory

__all__ = ["GLIBC", "SETTINGS", "keep_freed_memory"]
