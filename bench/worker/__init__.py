"""What trains and measures one variant: the runner, the Trainer, whole-step capture, the plain
reference loop and the robustness evaluation. Nothing here writes a run directory."""
