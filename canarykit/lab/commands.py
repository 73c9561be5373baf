"""The lab's commands, offered to `canarykit` by the `canarykit.commands` entry point.

The CLI is product code and never imports the lab; it finds these by entry point, so an
install without the lab's processes running still lists them, and the product stays free of
lab imports. Each entry: command name -> (module with add_arguments/run, help).
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("canarykit.lab.demo", "the main job: a rollout rehearsal against the local lab"),
    "lab": ("canarykit.lab.cli", "the local lab: up, down, status, apiserver"),
}
