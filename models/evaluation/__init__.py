"""Off-policy evaluation: what a candidate policy would have earned on logged traffic.

- :mod:`models.evaluation.estimators`: IPS, self-normalised IPS and doubly
  robust estimates with bootstrap intervals over a :class:`BanditLog`;
- :mod:`models.evaluation.logs`: reading logs (RTIM history exports and the
  minimal bandit-log format) from JSONL or parquet, streaming;
- :mod:`models.evaluation.replay`: the candidate policy's probabilities for
  RTIM history rows, by re-running the real arbitration on the logged context.
"""
