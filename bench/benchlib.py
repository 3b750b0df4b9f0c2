"""What every benchmark shares: writing its result table as JSON next to the printed one."""
from __future__ import annotations

import json
import os


def write_result(path: str, result: dict) -> dict:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {path}")
    return result
