"""Evaluation beside the training package: lm-eval Open LLM tasks, AlpacaEval with its judges,
the results table, and the controlled-sentiment experiment. It imports ``aot``; ``aot`` never
imports it."""
