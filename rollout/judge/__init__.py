"""Judgement: a stage's figures from the store, statistics, gates, the verdict, its model.

Its modules, each about one thing:

- ``business``: Business metrics beside query metrics: a flag's ``business:`` checks around a
  stage change.
- ``figures``: A stage's figures computed by the store: aggregates in SQL, latencies streamed
  into numpy.
- ``gates``: A gate's judgement before it is reported: status, figure, threshold, the reason in
  words.
- ``model``: The typed report model: what the judge finds and the report builder assembles,
  frozen.
- ``model_json``: The report model to JSON and back: the one place a report body is written or
  read.
- ``model_plans``: The report model's plans: EXPLAIN samples of both paths and the generic-plan
  checks, with plan shapes as trees (``PlanShape``).
- ``model_record``: What every part of the report model is made of: ``Record``, JSON values,
  omission rules.
- ``plan_checks``: Gates on plans that no single sample can flip: buffers, generic plans, plan
  perturbation.
- ``sequential``: Always-valid sequential tests for watching a stage: the false-alarm rate stays
  at alpha however often and however long the evidence is looked at.
- ``stats``: Statistics for latency judgement: Hodges-Lehmann shift with its CI, a one-sided
  Mann-Whitney test against a tolerance, a bootstrap quantile ratio, and the sample size a
  decision would need.
- ``summaries``: The figures behind a verdict: latency statistics, noise, failures by class,
  locks, plans, generic-plan checks and tenants, each summarised from observations into JSON-
  ready dicts.
- ``verdict``: Judge a stage's observations against the flag's gates: GO, NO-GO or INCONCLUSIVE.
"""

__all__ = [
    "business",
    "figures",
    "gates",
    "model",
    "model_json",
    "model_plans",
    "model_record",
    "plan_checks",
    "sequential",
    "stats",
    "summaries",
    "verdict",
]
