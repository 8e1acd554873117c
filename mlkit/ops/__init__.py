"""Operations on served models: drift monitoring, A/B reports, the rollback guard, skew
between a served model and its shadow, and replays of logged traffic on a candidate.

``stats`` holds the statistics they share (intervals, tests, corrections, PSI).
"""
