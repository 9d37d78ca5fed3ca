"""A run's output folder and its checkpoints: written atomically, checked file by file before a resume."""

import json
import os
import shutil
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..hub import check_repo_id
from .settings import TrainingSettings

TRAINER_STATE = "trainer_state.json"  # in each checkpoint: step, best so far, processes, files and their sizes
BEST_WEIGHTS = "best_weights.safetensors"  # in the output folder: the weights of the best validation step so far
TRAINING_CONFIG = "training_config.json"  # in the output folder: TrainingSettings.to_dict(); marks it as a run
# settings that may change between the start of a run and its resumption
RESUME_INSENSITIVE = {"resume", "report_to", "num_workers", "num_threads"}


# ---------------------------------------------------------------------------------------------------------------
# The output folder


def overlap(path: Path, other: Path) -> str | None:
    """How `path` and `other` share files: "is", "is inside" or "contains"; None if they do not."""
    path, other = path.resolve(), other.resolve()
    if path == other:
        return "is"
    if other in path.parents:
        return "is inside"
    if path in other.parents:
        return "contains"
    return None


def previous_run_settings(output: Path) -> dict | None:
    """The settings of the run in `output` (its training_config.json), None if it holds no such run."""
    try:
        settings = json.loads((output / TRAINING_CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return settings if isinstance(settings, dict) and {"losses", "output_dir"} <= settings.keys() else None


def changed_settings(previous: dict, current: dict, insensitive=RESUME_INSENSITIVE) -> list[str]:
    """The settings of `current` that `previous` (a training_config.json) has otherwise. Keys only `previous` has
    (e.g. `max_steps_this_run` in folders of older versions) do not count."""
    return sorted(k for k in current if k not in insensitive and previous.get(k) != current[k])


def check_output_dir(settings: TrainingSettings):
    """--output_dir shares no folder with an input, and holds nothing but a previous run of this script."""
    output = Path(settings.output_dir)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"--output_dir {output} is a file, not a folder")
    try:  # the model card written there at the end names the model by the folder's name
        check_repo_id(output.resolve().name, namespace=False)
    except ValueError as error:
        raise SystemExit(f"--output_dir {output}: its name names the model in the model card written there, and "
                         f"{error}") from error
    for flag in ("data", "image_root", "init_from", "vision_model", "text_model", "config", "cache_dir"):
        value = getattr(settings, flag)
        relation = overlap(output, Path(value)) if value and Path(value).exists() else None
        if relation:
            raise SystemExit(f"--output_dir {output} {relation} --{flag} {value}: a run writes into its output folder "
                             "(and --overwrite_output_dir deletes it), so it must not share files with an input; "
                             "choose another --output_dir")
    if not (output.is_dir() and any(output.iterdir())):
        return
    previous = previous_run_settings(output)
    if previous is None:
        what = "refusing to delete it" if settings.overwrite_output_dir else "choose an empty or new folder"
        raise SystemExit(f"--output_dir {output} is not empty and holds no run of this script (no readable "
                         f"training_config.json); {what}")
    if settings.overwrite_output_dir:
        return
    changed = changed_settings(previous, settings.to_dict())
    if changed:
        raise SystemExit(f"--output_dir {output} holds a different run (settings differ: {changed})")
    if not settings.resume:
        raise SystemExit(f"--output_dir {output} holds this run already; add --resume latest to continue it")


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def list_checkpoints(output_dir: Path) -> list[Path]:
    """The `checkpoints/step_N` folders of a run, oldest first (complete or not)."""
    folder = Path(output_dir) / "checkpoints"
    found = [p for p in folder.glob("step_*") if p.is_dir() and p.name[5:].isdigit()] if folder.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int):
    """Written to step_N.tmp, then renamed: a kill during the save never leaves a half checkpoint named step_N. Its
    trainer_state.json lists every file with its size, so that a file lost or truncated later is noticed on resume."""
    final = Path(output_dir) / "checkpoints" / f"step_{state['step']:07d}"
    partial = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every rank has written its part (its RNG state) before the rename
    if accelerator.is_main_process:
        files = {str(f.relative_to(partial)): f.stat().st_size for f in sorted(partial.rglob("*")) if f.is_file()}
        saved = {**state, "num_processes": accelerator.num_processes, "files": files}
        (partial / TRAINER_STATE).write_text(json.dumps(saved, indent=1))
        if final.exists():  # this step's checkpoint from before a resume from an earlier one: redone now
            shutil.rmtree(final)
        os.replace(partial, final)
        # checkpoints after this step are left from before a resume from an earlier one (e.g. an incomplete one
        # skipped); they are replaced when the run gets there, and never count among the kept
        done = [p for p in list_checkpoints(output_dir) if int(p.name[5:]) <= state["step"]]
        for old in done[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def checkpoint_problem(folder: Path, num_processes: int) -> str | None:
    """What makes `folder` unusable as a checkpoint for `num_processes` processes (naming the file), or None if it
    is complete. SystemExit if it is complete but was written by another number of processes."""
    state_file = folder / TRAINER_STATE
    if not state_file.is_file():
        return f"{state_file} is missing"
    try:
        saved = json.loads(state_file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"{state_file} is not valid JSON ({error})"
    if not (isinstance(saved, dict) and isinstance(saved.get("step"), int) and saved["step"] >= 0
            and {"best_metric", "best_step"} <= saved.keys()):
        return f"{state_file} holds no training state (step, best_metric, best_step)"
    written_by = saved.get("num_processes", len(list(folder.glob("random_states_*.pkl"))))
    if ("num_processes" in saved or written_by > num_processes) and written_by != num_processes:
        raise SystemExit(f"--resume: {folder} was written by {written_by} process(es) and this run has "
                         f"{num_processes}; resume with {written_by} (their data shards and RNG states differ)")
    for index in range(num_processes):
        rng = folder / f"random_states_{index}.pkl"
        if not rng.is_file():
            return f"{rng} (the RNG state of process {index}) is missing"
        if not _intact_zip(rng, check_crc=True):  # accelerate would drop an unreadable RNG state with no word
            return f"{rng} (the RNG state of process {index}) is corrupt"
    files = saved.get("files", {})  # absent in checkpoints written before the file list was kept
    if not isinstance(files, dict):
        return f"{state_file}: its file list is not a mapping"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes, {size} when it was written (truncated?)"
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            problem = _safetensors_problem(path)
            if problem:
                return f"{path} is not a readable safetensors file ({problem})"
        elif path.suffix in (".bin", ".pkl", ".pt") and _starts_like_zip(path) and not _intact_zip(path):
            return f"{path} is truncated or corrupt"  # torch.save writes zip archives
    return None


def _safetensors_problem(path: Path) -> str | None:
    try:
        with safe_open(str(path), "pt"):
            return None
    except (SafetensorError, OSError) as error:
        return str(error)


def _starts_like_zip(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(2) == b"PK"


def _intact_zip(path: Path, check_crc: bool = False) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return not check_crc or archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def resume_checkpoint(settings: TrainingSettings, num_processes: int) -> tuple[Path, list[str]]:
    """The checkpoint to resume from, and what was wrong with each newer one skipped on the way. `--resume latest`
    takes the newest complete checkpoint; SystemExit, naming the file, if there is none, or if the checkpoint named
    by `--resume <folder>` is incomplete."""
    output_dir = Path(settings.output_dir)
    if settings.resume != "latest":
        folder = Path(settings.resume)
        if not folder.is_dir():
            raise SystemExit(f"--resume {folder} is not a checkpoint folder")
        problem = checkpoint_problem(folder, num_processes)
        if problem:
            raise SystemExit(f"--resume {folder} is not a complete checkpoint: {problem}")
        chosen, skipped = folder, []
    else:
        found = list_checkpoints(output_dir)
        if not found:
            raise SystemExit(f"--resume latest: no checkpoint in {output_dir / 'checkpoints'}")
        skipped, chosen = [], None
        for folder in reversed(found):
            problem = checkpoint_problem(folder, num_processes)
            if problem is None:
                chosen = folder
                break
            skipped.append(f"{folder.name}: {problem}")
        if chosen is None:
            raise SystemExit(f"--resume latest: no complete checkpoint in {output_dir / 'checkpoints'} ("
                             + "; ".join(skipped) + ")")
    saved = json.loads((chosen / TRAINER_STATE).read_text())
    best_file = output_dir / BEST_WEIGHTS
    problem = None if saved["best_step"] is None else _safetensors_problem(best_file)
    if problem:
        raise SystemExit(f"--resume {chosen}: its best validation step {saved['best_step']} has its weights in "
                         f"{best_file}, which is missing or unreadable ({problem}); start the run again")
    return chosen, skipped
