"""Evaluation: answer scoring, benchmark tasks (for lmms-eval and the built-in evaluator) and the lmms-eval model."""
from pathlib import Path

# The lmms-eval task files: `python -m lmms_eval ... --include_path <TASKS_DIR>`.
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
