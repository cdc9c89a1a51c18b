"""The wheels `make gpu-check` needs on a GPU machine that has CUDA torch but cannot reach a package index.

Prints pinned requirements, one per line: everything xlsr_dist and the HF baseline import, with their dependencies,
at the versions installed here (the ones the tests ran with), less what such a machine already has (torch and its
CUDA libraries, and the packages listed in IMAGE below). `make gpu-wheels` downloads them for CPython 3.12 on
manylinux x86_64 into .whl/, and builds DeepSpeed (an sdist) as a pure-Python wheel there.

    python bench/gpu_wheels.py              # requirements for `pip download`
    python bench/gpu_wheels.py --built      # the ones built from source instead (deepspeed)
"""

from __future__ import annotations

import argparse
import re
from importlib import metadata

# What the run needs: the project's dependencies, with MLflow as its client and SQLite store only (mlflow-skinny,
# SQLAlchemy, Alembic: the full mlflow adds the UI server's stack, tens of MB the check never starts).
ROOTS = (
    "deepspeed",
    "transformers",
    "datasets",
    "jiwer",
    "mlflow-skinny",
    "sqlalchemy",
    "alembic",
    "soundfile",
    "soxr",
    "pyarrow",
    "fsspec",
    "pyyaml",
    "tqdm",
    "accelerate",
)
# Built here from the sdist with no compiled ops (DS_BUILD_OPS=0): no CUDA toolkit is needed to install it.
BUILT = ("deepspeed",)
# Never carried: the GPU machine's own CUDA build of torch and what comes with it.
NEVER = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*|setuptools|pip|wheel)$")
# Already on the nvidia-h200 image (its package list, 2026-11): carried only when pinned in MATCH below.
IMAGE = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi
    charset-normalizer click cloudpickle colorama contourpy cycler cython einops filelock fonttools frozenlist fsspec
    grpcio h11 h5py hf-xet httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver markdown markdown-it-py
    markupsafe matplotlib mdurl ml-dtypes mpmath msgpack multidict networkx ninja numpy nvidia-ml-py packaging
    pandas pathspec pillow pluggy prometheus-client propcache protobuf psutil py-cpuinfo pyarrow pygments pyparsing
    python-dateutil pyyaml regex requests rich safetensors scikit-learn scipy sentencepiece shellingham simplejson
    six sympy tabulate threadpoolctl tokenizers tqdm typer typing-extensions urllib3 werkzeug wrapt xxhash yarl
    zipp""".split()
)
# Pinned to this machine's versions even where the image has the package: the image's transformers (5.17) and
# huggingface_hub (1.x) are older than those xlsr_dist is tested with.
MATCH = {"transformers", "huggingface-hub", "tokenizers", "safetensors"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements_of(dist: metadata.Distribution) -> list[str]:
    """Names of the non-extra requirements of an installed distribution that apply to Linux CPython."""
    names = []
    for requirement in dist.requires or []:
        spec, _, marker = requirement.partition(";")
        if "extra ==" in marker or "extra==" in marker:
            continue
        if any(
            m in marker for m in ('sys_platform == "win32"', "platform_system == 'Windows'", 'sys_platform == "darwin"')
        ):
            continue
        if re.search(r'python_version\s*<\s*"3\.(9|10|11)"', marker):
            continue
        names.append(canonical(re.split(r"[\s<>=!~\[(;]", spec.strip(), maxsplit=1)[0]))
    return names


def closure() -> dict[str, str]:
    """name -> installed version, for ROOTS and everything they need, as installed here."""
    found: dict[str, str] = {}
    todo = [canonical(r) for r in ROOTS]
    while todo:
        name = todo.pop()
        if name in found or NEVER.match(name):
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional dependency not installed here is not needed here either
        found[name] = dist.version
        todo.extend(requirements_of(dist))
    return found


def carried() -> dict[str, str]:
    return {n: v for n, v in sorted(closure().items()) if n not in IMAGE or n in MATCH}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--built", action="store_true", help="the packages built from source (not downloaded)")
    args = parser.parse_args()
    for name, version in carried().items():
        if (name in BUILT) == args.built:
            print(f"{name}=={version}")


if __name__ == "__main__":
    main()
