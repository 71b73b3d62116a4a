"""The run report: one self-contained HTML page (plots embedded) per run.

This package is the only part of huse that imports matplotlib; the library never imports it.

```python
from huse.report import write_report
write_report(Path("runs/huse"), compare=[Path("runs/shared")])  # -> runs/huse/report.html
```
"""

from huse.report.html import write_report

__all__ = ["write_report"]
