"""Operations on served models: drift monitoring, A/B reports, the rollback guard, and
skew between a served model and its shadow.

``stats`` holds the statistics they share (intervals, tests, corrections, PSI).
"""
