"""End-to-end recipes built on the engine: `make demo`, `jowa learning-check`, fine-tuning with periodic evaluation."""
