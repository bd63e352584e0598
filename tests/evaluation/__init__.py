"""Tests of inference, scoring, the built-in evaluator and the lmms-eval integration."""
