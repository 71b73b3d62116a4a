"""The run report: one self-contained HTML page (plots embedded) per run.

This package is the only part of huse that imports matplotlib; the library never imports it.

```python
from huse.report import write_report
write_report(Path("runs/huse"), compare=[Path("runs/shared")])  # -> runs/huse/report.html
```
"""

from __future__ import annotations

__all__ = ["write_report"]


def __getattr__(name: str):
    # Imported on first use: ``huse.report.labels`` (used by the model card) must not pull
    # in matplotlib with the package.
    if name == "write_report":
        from huse.report.html import write_report

        return write_report
    raise AttributeError(f"module 'huse.report' has no attribute {name!r}")
