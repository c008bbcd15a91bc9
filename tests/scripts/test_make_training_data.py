"""scripts/make-training-data.sh: its recipe is the shipped model's, and amseg synth takes it."""

import json
import shlex
import subprocess
from pathlib import Path

from typer.testing import CliRunner

import model.cli.synth  # noqa: F401  (registers the command on `app`)
from model.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make-training-data.sh"
CARD = ROOT / "model" / "weights" / "default" / "model_card.json"


def recipe(out: Path) -> list[list[str]]:
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), "--dry-run"], capture_output=True, text=True, check=True
    )
    return [shlex.split(line) for line in result.stdout.splitlines()]


def option(command: list[str], name: str, default: str) -> str:
    return command[command.index(name) + 1] if name in command else default


def test_recipe_makes_the_datasets_and_slide_counts_of_the_shipped_model(tmp_path) -> None:
    commands = recipe(tmp_path)
    card = json.loads(CARD.read_text())["data"]
    datasets = [option(c, "--dataset", "synthetic") for c in commands]
    assert sorted(datasets) == sorted(card["train"]["datasets"])
    seeds = [option(c, "--seed", "0") for c in commands]
    assert len(set(seeds)) == len(seeds)
    slides = sum(int(option(c, "--count", "10")) for c in commands)
    assert slides == card["train"]["groups"] + card["valid"]["groups"]  # 2452 + 48
    validating = {
        d
        for c, d in zip(commands, datasets, strict=True)
        if float(option(c, "--valid-fraction", "0")) > 0
    }
    assert validating == set(card["valid"]["datasets"])


def test_every_command_of_the_recipe_runs(tmp_path) -> None:
    """One small slide per command, with the recipe's own options otherwise."""
    runner = CliRunner()
    commands = recipe(tmp_path / "data")
    for command in commands:
        args = command[1:]  # drop "amseg"
        args[args.index("--count") + 1] = "1"
        args[args.index("--height") + 1] = args[args.index("--width") + 1] = "192"
        args[args.index("--valid-fraction") + 1] = "0"
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
    written = list((tmp_path / "data" / "train").glob("*/*/source/*"))
    assert len(written) == len(commands) == 19
