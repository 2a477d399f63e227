"""Closing the loop on live traffic: decision log, shadow evaluation, drift, retraining rows (issue 13).

    decision_log.py  the server's decision log: bounded queue → writer thread → SQLite (WAL), rotated, redacted
    shadow.py        a sampled share of routed requests answered again (reference / cheaper model) and graded,
                     asynchronously, under an hourly $ budget and governance; misrouting rates with bootstrap CIs
    drift.py         two-sample tests (MMD with a permutation p-value, χ² on mixes) and mixes over time
    sketch.py        the feature-hashing text sketch the log stores and the drift test compares
    retrain.py       shadow-graded rows → outcome rows (the `dataset=saved` format); old vs new bundle on them
    live.py          what the server wires in: log + shadow + Prometheus gauges, behind three calls
    settings.py      DecisionLogSettings / ShadowSettings (the one source of their defaults)

This package init imports nothing: `kronaxis_lab.serving.settings` imports `monitoring.settings`.
"""
