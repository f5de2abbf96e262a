"""Teachers: the teacher network, its PPO trainer, shipped pretrained teachers and loaders."""

from agents.loading import load_teacher

__all__ = ["load_teacher"]
