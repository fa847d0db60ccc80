"""Decision-transformer family for offline multi-task RL: DT / MTDT, Prompt-DT, HarmoDT, MTBC."""

from agents.dt.losses import action_loss, returns_to_go, rtg_after_step
from agents.dt.networks import HARMODT, VARIANTS, DecisionTransformer, DTConfig, make_dt

__all__ = ["HARMODT", "VARIANTS", "DTConfig", "DecisionTransformer", "action_loss", "make_dt",
           "returns_to_go", "rtg_after_step"]
