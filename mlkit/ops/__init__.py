"""Operations on served models: drift monitoring, A/B reports, the rollback guard.

``stats`` holds the statistics they share (intervals, tests, corrections, PSI).
"""
