"""What a relaunch reads from an object store (issue 24, Deliver item 2), measured on the local S3 server (moto,
with its request recorder):

(a) a full run of a sweep into ``s3://bench/<name>`` (wall time, exit code, nodes complete);
(b) a relaunch of the finished sweep: requests and bytes the driver's input check downloads (object GETs;
    listings and HEADs counted apart), then the same for the whole relaunch (driver and trials);
(c) a relaunch after one fine-tune's ``weights.safetensors`` was corrupted in the store (one flipped byte, the
    object rewritten): the same counts, the nodes that re-ran (markers written during the relaunch) against the
    target (exactly the corrupted node and everything downstream of it), and the exit code.

    SRNET_DATA_DIR=/work/shared/data nice -n 15 .venv/bin/python bench/relaunch_bytes.py [--spec sweeps/paper_small.yaml]

Prints a table and writes bench/results/relaunch_bytes.json.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from urllib.parse import unquote, urlparse

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import write_result  # noqa: E402

BUCKET = "bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def s3_server(workdir: str):
    """moto's S3 server in its own session (tests/conftest.py ``s3_server``), with the request recorder."""
    port, recording = _free_port(), os.path.join(workdir, "moto_recording.jsonl")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "MOTO_RECORDER_FILEPATH": recording})
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("moto server did not start")
                time.sleep(0.2)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}
        os.environ.update(env)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True).create_dir(BUCKET)
        yield env["AWS_ENDPOINT_URL"], recording
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class Recorder:
    def __init__(self, endpoint: str, path: str):
        self.endpoint, self.path = endpoint, path

    def _post(self, action: str) -> None:
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint}/moto-api/recorder/{action}-recording",
                                                      method="POST")).read()

    @contextlib.contextmanager
    def recording(self):
        self._post("reset")
        self._post("start")
        try:
            yield
        finally:
            self._post("stop")

    def requests(self):
        """(method, object key or None for a bucket request, query, headers, body bytes) per recorded request."""
        with open(self.path) as f:
            for line in f:
                if not line.strip():
                    continue
                r = json.loads(line)
                url = urlparse(r["url"])
                parts = unquote(url.path).lstrip("/").split("/", 1)
                key = parts[1] if len(parts) > 1 and parts[1] else None
                body = r.get("body") or ""
                size = len(base64.b64decode(body)) if r.get("body_encoded") else len(body.encode())
                yield r["method"], key, url.query, r.get("headers", {}), size


def tally(recorder: Recorder, sizes: dict[str, int]) -> dict:
    """Requests by kind; bytes of object bodies downloaded (an object's size, or its Range), artifacts apart from
    markers and other bookkeeping; marker PUTs (= nodes committed)."""
    out = {"requests": 0, "listings": 0, "heads": 0, "object_gets": 0, "object_get_bytes": 0,
           "artifact_gets": 0, "artifact_get_bytes": 0, "marker_gets": 0, "puts": 0, "put_bytes": 0,
           "committed": []}
    for method, key, query, headers, body in recorder.requests():
        out["requests"] += 1
        if method == "GET" and key is None:
            out["listings"] += 1
        elif method == "HEAD":
            out["heads"] += 1
        elif method == "GET":
            rng = headers.get("Range") or headers.get("range")
            if rng and rng.startswith("bytes="):
                lo, _, hi = rng[6:].partition("-")
                size = min(int(hi), sizes.get(key, 1 << 62) - 1) - int(lo) + 1 if hi else sizes.get(key, 0) - int(lo)
            else:
                size = sizes.get(key, 0)
            out["object_gets"] += 1
            out["object_get_bytes"] += max(size, 0)
            name = key.rsplit("/", 1)[-1]
            if name == "_COMPLETE.json":
                out["marker_gets"] += 1
            elif not name.startswith("_") and "/results/" not in f"/{key}" and "/_" not in key:
                out["artifact_gets"] += 1
                out["artifact_get_bytes"] += max(size, 0)
        elif method in ("PUT", "POST"):
            out["puts"] += 1
            out["put_bytes"] += body
            if key and key.endswith("/_COMPLETE.json") and method == "PUT":
                stage, node = key.split("/")[-3:-1]
                out["committed"].append(f"{stage}/{node}")
    out["committed"] = sorted(set(out["committed"]))
    return out


def object_sizes(root: str) -> dict[str, int]:
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path.split("/", 1)[1]: i.size for i in infos if i.type == pafs.FileType.File}


def launch(spec: str, root: str, cache: str, log: str, tree: str = REPO) -> tuple[int, float]:
    env = {**os.environ, "SRNET_CACHE": cache}
    t0 = time.time()
    with open(log, "w") as out:
        rc = subprocess.call([sys.executable, "-m", "orchestrator.launch", spec, "--output-dir", root,
                              "--no-figure", "--no-report"], cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    return rc, time.time() - t0


def check_in(tree: str, spec: str, root: str, cache: str) -> dict:
    """``check_only`` run by the code of ``tree`` (this checkout, or an older one for the before figures)."""
    out = subprocess.run([sys.executable, os.path.join(tree, "bench", "relaunch_bytes.py"), "--check-only", spec,
                          root, cache], cwd=tree, capture_output=True, text=True, env=os.environ)
    if out.returncode:
        raise RuntimeError(f"check in {tree} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_only(spec_path: str, root: str, cache: str) -> dict:
    """The driver's input check of a launch, alone (what ``launch`` runs before Ray starts)."""
    from orchestrator import failures
    from orchestrator.launch import _published_keys
    from orchestrator.plan import build_plan
    from orchestrator.results import results_dir
    from orchestrator.cluster import override_output_dir
    from orchestrator.spec import load_spec
    from workers.store import ArtifactStore

    spec = load_spec(spec_path)
    override_output_dir(spec, root)
    plan = build_plan(spec)
    t0 = time.time()
    store = ArtifactStore(spec.artifact_root(), cache_dir=cache)  # <output_dir>/artifacts, as the launch's
    found = failures.verify_inputs(plan, store, _published_keys(results_dir(root)))
    return {"invalidated": sorted(f"{plan.nodes[k].stage}/{k}" for k in found), "seconds": round(time.time() - t0, 2)}


def plan_of(spec_path: str, root: str):
    from orchestrator.plan import build_plan
    from orchestrator.cluster import override_output_dir
    from orchestrator.spec import load_spec

    spec = load_spec(spec_path)
    override_output_dir(spec, root)
    return build_plan(spec), spec.artifact_root()


def downstream(plan, key: str) -> set[str]:
    out, frontier = set(), {key}
    while frontier:
        frontier = {n.key for n in plan.nodes.values() if any(u.key in frontier for u in n.upstream)} - out
        out |= frontier
    return out


def corrupt(root: str, stage: str, key: str, name: str) -> str:
    import pyarrow.fs as pafs

    fs, base = pafs.FileSystem.from_uri(root)
    path = f"{base.rstrip('/')}/{stage}/{key}/{name}"
    with fs.open_input_stream(path) as f:
        data = bytearray(f.read())
    data[len(data) // 2] ^= 0xFF
    with fs.open_output_stream(path) as f:
        f.write(bytes(data))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="sweeps/paper_small.yaml")
    parser.add_argument("--workdir", help="default: a temp dir, removed at the end")
    parser.add_argument("--out", default=os.path.join(REPO, "bench", "results", "relaunch_bytes.json"))
    parser.add_argument("--baseline-tree", help="also measure (b) and (c) with the code of this checkout (an export "
                        "of an older commit with this script copied in), before this checkout's")
    parser.add_argument("--check-only", nargs=3, metavar=("SPEC", "ROOT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.check_only:
        print(json.dumps(check_only(*args.check_only)))
        return 0
    spec = os.path.join(REPO, args.spec) if not os.path.isabs(args.spec) else args.spec
    workdir = args.workdir or tempfile.mkdtemp(prefix="relaunch-bytes-")
    os.makedirs(workdir, exist_ok=True)
    name = os.path.splitext(os.path.basename(spec))[0]
    root = f"s3://{BUCKET}/{name}"
    phases = {}
    with s3_server(workdir) as (endpoint, recording):
        rec = Recorder(endpoint, recording)
        plan, store_root = plan_of(spec, root)  # the artifacts: <output_dir>/artifacts
        rc, wall = launch(spec, root, os.path.join(workdir, "cache-a"), os.path.join(workdir, "a.log"))
        from workers.store import ArtifactStore

        done = ArtifactStore(store_root, cache_dir=os.path.join(workdir, "cache-x")).list_complete()
        complete = sum((n.stage, k) in done for k, n in plan.nodes.items())
        phases["a_full_run"] = {"rc": rc, "wall_s": round(wall, 1), "nodes": len(plan.nodes), "complete": complete}
        print(f"(a) full run: rc {rc}, {wall:.0f} s, {complete}/{len(plan.nodes)} nodes complete", flush=True)

        def relaunch(tag: str) -> dict:
            out = {}
            trees = ([("before", args.baseline_tree)] if args.baseline_tree else []) + [("after", REPO)]
            for label, tree in trees:
                sizes = object_sizes(f"s3://{BUCKET}")
                with rec.recording():
                    check = check_in(tree, spec, root, os.path.join(workdir, f"cache-check-{tag}-{label}"))
                check.update(tally(rec, sizes))
                with rec.recording():
                    rc, wall = launch(spec, root, os.path.join(workdir, f"cache-{tag}-{label}"),
                                      os.path.join(workdir, f"{tag}-{label}.log"), tree)
                out[label] = {"check": check, "relaunch": {"rc": rc, "wall_s": round(wall, 1), **tally(rec, sizes)}}
                print(f"({tag}, {label}) {json.dumps(out[label])}", flush=True)
            return out

        def save():
            write_result(args.out + ".partial", {"phases": phases})

        save()
        phases["b_relaunch_finished"] = relaunch("b")
        save()

        # the fine-tune with the fewest nodes downstream (the poe one on paper_small: 7), so (c) stays short
        target = min((n for n in plan.nodes.values() if n.stage == "finetune" and downstream(plan, n.key)),
                     key=lambda n: len(downstream(plan, n.key)))
        time.sleep(1.1)  # S3 times are whole seconds: the corruption is not in its commit's second
        corrupt(store_root, "finetune", target.key, "weights.safetensors")
        expected = sorted(f"{plan.nodes[k].stage}/{k}" for k in {target.key} | downstream(plan, target.key))
        c = relaunch("c")
        for label in list(c):
            c[label]["rerun_matches_target"] = c[label]["relaunch"]["committed"] == expected
        c["corrupted"] = f"finetune/{target.key}/weights.safetensors"
        c["expected_rerun"] = expected
        phases["c_relaunch_corrupted"] = c
        save()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    rows = []
    for label, ph in (("(b) finished sweep", phases["b_relaunch_finished"]),
                      ("(c) one corrupted fine-tune", phases["c_relaunch_corrupted"])):
        for code in ("before", "after"):
            if code not in ph:
                continue
            for part in ("check", "relaunch"):
                t = ph[code][part]
                rows.append([label, code, part, t["requests"], t["listings"], t["heads"], t["object_gets"],
                             t["marker_gets"], t["artifact_gets"], t["artifact_get_bytes"], len(t["committed"]),
                             t.get("rc", ""), t.get("wall_s", t.get("seconds"))])
    head = ["case", "code", "part", "requests", "listings", "HEADs", "object GETs", "marker GETs", "artifact GETs",
            "artifact bytes", "nodes re-run", "rc", "wall s"]
    print(" | ".join(head))
    for r in rows:
        print(" | ".join(str(x) for x in r))
    c = phases["c_relaunch_corrupted"]
    for code in ("before", "after"):
        if code in c:
            print(f"(c, {code}) re-ran {len(c[code]['relaunch']['committed'])} node(s), target "
                  f"{len(c['expected_rerun'])} (the corrupted fine-tune and its downstream); "
                  f"match: {c[code]['rerun_matches_target']}")
    write_result(args.out, {"spec": args.spec, "store": root, "commit": commit, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                            "host": socket.gethostname(), "cpus": os.cpu_count(), "phases": phases,
                            "table": {"columns": head, "rows": rows}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
