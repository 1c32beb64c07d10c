"""Deciding: catalogue, rules, facts, contact policies, requests, the cascade,
the decision record and the decision log."""
