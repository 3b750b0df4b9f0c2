"""What every benchmark shares: writing its result table as JSON next to the printed one."""
from __future__ import annotations

import json
import os
import tempfile


def write_result(path: str, result: dict) -> dict:
    """Write ``result`` as JSON, atomically (a temp file in the same directory, then os.replace): a killed
    run never leaves a half-written file where a reader (the cost model) expects a whole one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=1)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result file is as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    print(f"wrote {path}")
    return result
