"""Operations on served models: drift monitoring, A/B reports, the rollback guard, skew
between a served model and its shadow, replays of logged traffic on a candidate, and the
served records whose labels came back (for retraining).

``stats`` holds the statistics they share (intervals, tests, corrections, PSI).
"""
