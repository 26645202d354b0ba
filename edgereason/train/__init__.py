"""GRPO training with a LoRA adapter on TRL: rewards, schedules, curriculum, the rollout engine, runs."""
