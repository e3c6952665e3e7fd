"""Hardening (issue 9): fuzzing, fault injection, load and soak against the whole service."""
