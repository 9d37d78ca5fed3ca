"""The documentation cannot drift from the code: every ```python block of docs/*.md runs (page by page, in order,
against a tiny stand-in for the model that examples/pretrain.py writes), and every `python examples/...` command in
the docs and the README parses with its script's own argument parser."""

import re
import shlex
from pathlib import Path

import pytest

from egma_hf.data import make_synthetic_mimic_eye
from tests.helpers import REPO_ROOT, load_example

PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(?P<info>[^\n]*)\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
SCRIPT = re.compile(r"\b(?:python|accelerate launch)\b.*?\s(examples/\w+\.py)\b(.*)")  # the script, then its args


def blocks(path: Path, info: str) -> list[str]:
    return [m["body"] for m in FENCE.finditer(path.read_text()) if m["info"].strip() == info]


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory):
    """A working folder with `egma-pretrain/` (a tiny EGMA model and processor) and a cache holding a small synthetic
    corpus where the default run keeps its 640-reading one."""
    import torch

    from egma_hf import EGMAImageProcessor, EGMAModel, EGMAProcessor
    from tests.helpers import GRID, IMAGE_SIZE, make_tokenizer, tiny_config

    root = tmp_path_factory.mktemp("docs")
    torch.manual_seed(0)
    EGMAModel(tiny_config()).save_pretrained(root / "work" / "egma-pretrain")
    EGMAProcessor(image_processor=EGMAImageProcessor(size=IMAGE_SIZE, gaze_grid_size=GRID),
                  tokenizer=make_tokenizer()).save_pretrained(root / "work" / "egma-pretrain")
    make_synthetic_mimic_eye(root / "cache" / "synthetic-640-seed0", 24, seed=0)
    return root


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p, "python")], ids=lambda p: p.name)
def test_python_snippets_run(page, stand_in, monkeypatch, capsys):
    monkeypatch.chdir(stand_in / "work")
    monkeypatch.setenv("EGMA_HF_CACHE", str(stand_in / "cache"))
    namespace = {"__name__": f"docs_{page.stem}"}
    for number, code in enumerate(blocks(page, "python"), 1):
        try:
            exec(compile(code, f"{page.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{page.name}, python block {number} failed: {error!r}") from error
    assert capsys.readouterr().out.strip(), f"{page.name}: its snippets should print what they show"


def commands(path: Path) -> list[str]:
    found = []
    for body in blocks(path, "bash"):
        for line in body.replace("\\\n", " ").splitlines():
            match = SCRIPT.search(line.split("#")[0])
            if match:
                found.append((match[1], match[2]))
    return found


DOCUMENTED = [(page, script, rest) for page in PAGES + [REPO_ROOT / "README.md"] for script, rest in commands(page)]


def test_the_docs_show_every_example_script():
    shown = {script for _, script, _ in DOCUMENTED}
    assert shown >= {f"examples/{p.name}" for p in (REPO_ROOT / "examples").glob("*.py")} - {"examples/quickstart.py"}


@pytest.mark.parametrize("page, script, rest", DOCUMENTED,
                         ids=[f"{p.name}:{s.split('/')[-1]}:{i}" for i, (p, s, _) in enumerate(DOCUMENTED)])
def test_documented_commands_parse(page, script, rest, tmp_path, monkeypatch):
    module = load_example(Path(script).stem)
    argv = [token for token in shlex.split(rest) if token != "..."]
    if "--config" in argv:  # pretrain reads the file while parsing: give it an empty one
        monkeypatch.chdir(tmp_path)
        Path(argv[argv.index("--config") + 1]).write_text("{}")
    try:
        module.parse_args(argv)
    except SystemExit as error:
        raise AssertionError(f"{page.name}: `{script} {rest.strip()}` does not parse (exit {error.code})") from error
