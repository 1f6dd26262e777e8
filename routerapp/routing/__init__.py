"""costpass meta-learned router: pure Python, no Django.

Stable API (what the Django side, the CLI and notebooks call)::

    from routerapp.routing import (
        Candidate, Constraints, Decision, Router, fit_router, evaluate,
        RouterError, TableError, UnknownConfigError, NoAllowedCandidateError, UnknownLearnerError,
    )

    router = fit_router(outcomes, prompts, candidates, learner="meta-logit", seed=0)
    d = router.decide(prompt_text, task="gsm8k", constraints=Constraints(max_cost_usd=0.01))
    d.config_id, d.p_correct, d.cost_usd, d.latency_s, d.alternatives, d.explored
    router.observe(prompt_text, "gsm8k", d.config_id, correct=True, cost_usd=0.0012)
    router.save("var/routers/v3");  Router.load("var/routers/v3")
    blob = router.to_bytes();  Router.from_bytes(blob)          # e.g. a RouterVersion BinaryField
    report = evaluate(router, test_outcomes, test_prompts, train_outcomes, train_prompts)

Tables (pandas DataFrames; see ``routing.tables``):

- outcomes: ``prompt_uid, dataset, config_id, correct`` (0..1) and ``cost_usd``; optional
  ``model, strategy, input_tokens, output_tokens, latency_s``. Repeated rows for one
  (prompt, config) are averaged (the product's query log). ``dataset`` is the caller's task tag.
- prompts: ``prompt_uid, dataset, prompt``; text and tag may be empty.
- candidates: a DataFrame ``config_id, model[, strategy, samples, input_usd_per_mtok,
  output_usd_per_mtok, max_tokens]`` or a list of :class:`Candidate`. A candidate with no outcome
  rows at all still gets p(correct) and cost estimates from its descriptors (its model's other
  configurations, strategy family, sample count, price).

``fit_router`` raises TableError (malformed tables), UnknownConfigError (outcomes naming a config id
that is not a candidate; pass ``unknown_configs="drop"`` to ignore them), UnknownLearnerError.

``Router.decide(prompt, task=None, constraints=None, lam=None, *, explore=False) -> Decision``:
``lam=None`` uses the router's default rule, ``argmax p - cost / lam*`` with ``lam*`` fitted to
minimise cost-of-pass on cross-fitted training predictions (or ``argmin cost / p`` when that was
better there); an explicit ``lam`` moves along the cost/accuracy frontier (``math.inf`` = most
accurate). ``Constraints(allowed_config_ids, allowed_models, max_cost_usd, max_latency_s,
min_accuracy)``; nothing allowed -> NoAllowedCandidateError. ``explore=True`` enables bounded
Thompson exploration (online serving). ``Decision.alternatives`` lists the allowed candidates best
first as ``Alternative(config_id, p_correct, cost_usd, cop)`` (iterable as a 4-tuple).

``Router.observe(prompt, task, config_id, correct, cost_usd)`` updates per-tag posterior offsets
and cost factors; decisions for that tag move after a few observations. ``Router.decide_many`` and
``Router.sweep`` are the batch forms used by the CLI and the evaluation.

``evaluate(...)`` returns ``{"n_prompts", "n_configs", "cost_range", "zero_router_aiq",
"policies": {name: {accuracy, mean_cost, cop, gap_closed, ...}}}`` for ``router`` (plus ``aiq,
ece_all, ece_chosen``), ``router_online``, ``best_single_cop``, ``best_single_acc``, ``random``,
``knn`` (when train prompts are given), ``oracle_min_cop``, ``oracle_cheapest_correct``.
Metric definitions: ``routing.metrics``.

Learners are plugins: ``@register_learner("slug")`` in ``routing.learners``; ``meta-logit``
(default) and ``knn`` (baseline).
"""

from routerapp.routing.evaluation import evaluate
from routerapp.routing.learners import LEARNERS, get_learner, register_learner
from routerapp.routing.router import Router, RouterParams, fit_router
from routerapp.routing.types import (
    Alternative,
    Candidate,
    Constraints,
    Decision,
    NoAllowedCandidateError,
    RouterError,
    TableError,
    UnknownConfigError,
    UnknownLearnerError,
)

__all__ = [
    "LEARNERS",
    "Alternative",
    "Candidate",
    "Constraints",
    "Decision",
    "NoAllowedCandidateError",
    "Router",
    "RouterError",
    "RouterParams",
    "TableError",
    "UnknownConfigError",
    "UnknownLearnerError",
    "evaluate",
    "fit_router",
    "get_learner",
    "register_learner",
]
