"""transformers' own common model tests, obtained at check time from the installed version's source distribution.

The wheel does not ship `tests/`; the sdist on the package index does (`tests/test_modeling_common.py`,
`tests/test_configuration_common.py`), so this module downloads the sdist of exactly the installed version once,
extracts those files into the egma_hf cache and imports them as a package. Nothing of transformers' test code is
kept in this repository.

The sdist leaves out three modules that `test_modeling_common.py` / `test_configuration_common.py` import; they are
given stand-ins here, each for a stated reason:

- `generation/test_utils.py` (`GenerationTesterMixin`): an empty marker class. The common tests only ask whether a
  test class inherits from it; EGMA cannot generate and its test classes do not inherit it, as CLIP's do not.
- `exporters/test_export.py` (`ExportTesterMixin`, the `torch.export` tests): an empty base class, because the
  tests are not in the sdist; the export tests are therefore not run.
- `utils/test_configuration_utils.py` (`config_common_kwargs`): an empty dict. It is only read by
  `check_config_arguments_init`, which returns before using it for composite configs such as EGMAConfig.

Set `EGMA_HF_TRANSFORMERS_SDIST` to a local `transformers-<version>.tar.gz` to skip the download.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import transformers
from filelock import FileLock

from egma_hf.data import default_cache_dir

PACKAGE = "transformers_upstream_tests"
MEMBERS = ("tests/test_modeling_common.py", "tests/test_configuration_common.py")
STAND_INS = {
    "generation/__init__.py": "",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    "exporters/__init__.py": "",
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "utils/__init__.py": "",
    "utils/test_configuration_utils.py": "config_common_kwargs = {}\n",
}


def _download_sdist(version: str, into: Path) -> Path:
    local = os.environ.get("EGMA_HF_TRANSFORMERS_SDIST")
    if local:
        path = Path(local)
        if not path.is_file():
            raise FileNotFoundError(f"EGMA_HF_TRANSFORMERS_SDIST={local!r} is not a file")
        return path
    command = [sys.executable, "-m", "pip", "download", f"transformers=={version}", "--no-deps",
               "--no-binary", ":all:", "--quiet", "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(into.glob(f"transformers-{version}.tar.gz"))
    if result.returncode != 0 and not found:
        raise RuntimeError(
            f"could not download the transformers {version} source distribution from the package index "
            "(needed for transformers' common model tests; or set EGMA_HF_TRANSFORMERS_SDIST):\n"
            f"{result.stderr[-2000:]}"
        )
    return found[0]


def upstream_tests_folder() -> Path:
    """Folder of the extracted package (built once per transformers version, under a file lock)."""
    version = transformers.__version__
    root = default_cache_dir() / f"transformers-{version}-tests"
    package = root / PACKAGE
    done = package / "__init__.py"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        if not done.exists():
            sdist = _download_sdist(version, root)
            package.mkdir(exist_ok=True)
            with tarfile.open(sdist) as archive:
                for member in MEMBERS:
                    name = f"transformers-{version}/{member}"
                    source = archive.extractfile(name)
                    if source is None:
                        raise RuntimeError(f"{sdist} has no {name}")
                    (package / Path(member).name).write_bytes(source.read())
            for relative, text in STAND_INS.items():
                (package / relative).parent.mkdir(parents=True, exist_ok=True)
                (package / relative).write_text(text)
            done.write_text("")
    return package


def import_upstream(module: str):
    """Import `test_modeling_common` or `test_configuration_common` from the extracted package."""
    if PACKAGE not in sys.modules:
        package = upstream_tests_folder()
        spec = importlib.util.spec_from_file_location(
            PACKAGE, package / "__init__.py", submodule_search_locations=[str(package)]
        )
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[PACKAGE])
    return importlib.import_module(f"{PACKAGE}.{module}")
