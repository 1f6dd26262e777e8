"""costpass meta-learned router: pure Python (numpy / scipy / scikit-learn), no Django.

Stable API (what the Django side, the CLI and notebooks call)::

    from routerapp.routing import (
        Candidate, Constraints, Decision, Alternative, Router, RouterParams, fit_router, evaluate,
        RouterError, TableError, UnknownConfigError, NoAllowedCandidateError, UnknownLearnerError,
    )

    router = fit_router(outcomes, prompts, candidates, learner="meta-logit", seed=0)
    d = router.decide(prompt_text, task="gsm8k", constraints=Constraints(max_cost_usd=0.01))
    d.config_id, d.p_correct, d.cost_usd, d.latency_s, d.alternatives, d.explored, d.lam
    router.observe(prompt_text, "gsm8k", d.config_id, correct=True, cost_usd=0.0012)
    router.save("var/routers/v3");  Router.load("var/routers/v3")   # router.json + arrays.npz
    blob = router.to_bytes();  Router.from_bytes(blob)             # one zip, e.g. a BinaryField
    report = evaluate(router, test_outcomes, test_prompts, train_outcomes, train_prompts)
    router.fit_info   # JSON-able: sizes, tags, cross-fitted CoP per policy, lambda, calibration

Tables (pandas DataFrames; schemas in ``routing.tables``):

- outcomes: ``prompt_uid, config_id, correct`` (0..1, fractions allowed) plus ``dataset`` (the
  caller's task tag), ``cost_usd``; optional ``model, strategy, input_tokens, output_tokens,
  latency_s``. Repeated rows for one (prompt, config), as in the product's query log, are averaged.
- prompts: ``prompt_uid, dataset, prompt``; text and tag may be empty; ``None`` = take the tags
  from the outcomes and no text.
- candidates: a DataFrame ``config_id, model[, strategy, samples, input_usd_per_mtok,
  output_usd_per_mtok, max_tokens]`` or a list of :class:`Candidate`. A candidate with no outcome
  rows at all still gets p(correct) (from its model's other configurations, strategy family,
  sample count, price; wide uncertainty) and a cost (price x expected tokens x samples).

``fit_router(outcomes, prompts, candidates, *, learner="meta-logit", seed=0, params=None,
unknown_configs="error")`` raises TableError (malformed tables), UnknownConfigError (outcomes
naming a config id that is not a candidate; ``unknown_configs="drop"`` ignores them),
UnknownLearnerError. ``params``: :class:`RouterParams` or a dict (``folds``, ``kappa``,
``policy`` "auto" / "lambda" / "ratio", ``learner_params``, ``online``...). About 8 s on 233k
outcome rows, single-threaded BLAS.

``Router.decide(prompt, task=None, constraints=None, lam=None, *, explore=False) -> Decision``.
``lam=None`` uses the default rule: on a task tag seen in training ``argmax p - cost / lam*``
with ``lam*`` the cost-of-pass reached on cross-fitted training predictions (the per-prompt rule
that minimises *total* USD / correct), on an unseen tag the scale-free ``argmin cost / p``. An
explicit ``lam`` (USD per correct answer) moves along the cost/accuracy frontier (``math.inf`` =
most accurate). Known tags use a lower confidence bound on p, so configurations the router knows
little about must look clearly better. On a tag never seen in training (``unseen_rule="anchored"``,
the default) p is each configuration's mean over the training *families* (``types.family_of``),
not a text-classifier mixture of the known tags, plus what that tag learned online; with
``kappa_unseen > 0`` a configuration other than ``router.anchor_config_id`` (the best single
configuration of the training data) must beat it by ``kappa_unseen`` times the spread of its logit
gap to the anchor across the training families (``router.unseen_margin(tag)``, shrinking as the
tag's outcomes arrive). A guard (``router.unseen_guard``, ``router.unseen_penalty(tag)``) keeps
that default choice at the anchor unless the challenger's predicted cost-of-pass beats the
anchor's by more than ``unseen_cop_se`` paired standard errors of their training CoP ratio, after
a family-level advantage the pooled training data does not show is pulled back unless the
training families agree on it (``unseen_family_se``); it fades as the tag's outcomes arrive and
leaves the explicit-lambda sweep (AIQ) alone. The online prior of a new tag is the covariance of the configurations'
logits across the training families, so a few outcomes of one configuration move the others.
``unseen_rule="ratio"`` restores the earlier rule. ``Constraints(allowed_config_ids, allowed_models, max_cost_usd,
max_latency_s, min_accuracy)``: nothing allowed -> NoAllowedCandidateError (message names the
limits). ``explore=True`` (online serving) allows bounded exploration: on a known tag a Thompson draw on
at most 10% of decisions; on a new tag a probe of the configuration most likely to beat the greedy
choice, only while the posterior ranking is unsettled, within a budget (3 + 5% of the tag's
decisions) and when worth its expected loss over the tag's horizon (``routing.online``); never a
configuration more than 3x dearer than the greedy choice. ``Decision.explored`` says when it
happened. ``Decision.alternatives``: the allowed
candidates best first as ``Alternative(config_id, p_correct, cost_usd, cop)`` (unpacks as a
4-tuple). ``latency_s`` is None unless outcome tables recorded latency. About 0.3-0.6 ms per call.

``Router.observe(prompt, task, config_id, correct, cost_usd)`` updates the online posterior of
that task tag (see ``routing.online``); decisions on a new tag move after a few outcomes. Raises
UnknownConfigError / ValueError on bad input. ``reset_online()`` forgets; the online state is saved
with the router. A Router is not thread-safe: ``observe`` and ``decide(explore=True)`` mutate it,
so share one per process behind a lock, or one per worker.

Batch forms: ``Router.decide_many(prompts, tags, lam=None, constraints=None) -> (choice, p,
cost)`` and ``Router.sweep(prompts, tags, n_points, constraints=None)`` (CLI, evaluation).

``evaluation.online_curve(router, test_outcomes, test_prompts, train_outcomes, *, points=(50, 100,
200, 500), seeds=3) -> dict`` (plain data, for a plot): gap_closed of the online replay over the
first k graded queries, against the best single configuration chosen on train and the oracle on
the same k prompts. ``transfer.lofo(outcomes, prompts, ...)``: leave-one-family-out rows (static,
online, curve, AIQ vs zero router, baselines); ``transfer.load_source(data_dir, name)`` builds the
public sources of ``transfer.SOURCES``; ``transfer.load_external(name, dir, data_dir=None)`` reads
a source of ``external.EXTERNAL`` from files fetched from GitHub (bench/README.md says how).

``evaluate(router, test_outcomes, test_prompts, train_outcomes, train_prompts=None, *,
sweep_points=25, online=True, knn=True, seed=0) -> dict``: ``{"n_prompts", "n_configs",
"cost_range", "zero_router_aiq", "policies": {name: {accuracy, mean_cost, cop, n, n_correct,
total_cost, gap_closed, ...}}}`` for ``router`` (plus ``aiq, ece_all, ece_chosen,
policy_mode, lambda_default``), ``router_online`` (replay with exploration), ``best_single_cop``
and ``best_single_acc`` (chosen on train; ``config_id``), ``random`` (exact expectation),
``knn`` (needs train prompts; ``aiq``), ``oracle_min_cop``, ``oracle_cheapest_correct``. ``cop`` is
None when nothing is correct. Metric definitions: ``routing.metrics``.

Learning sources: suite directories (``routing.tables.load_suite``), raw outcome tables and
strategy simulations (``routing.simulation``), the product's log exported to the outcome schema.
Learners are plugins: ``@register_learner("slug")`` in ``routing.learners``; ``meta-logit``
(default) and ``knn`` (baseline). CLI: ``costpass-router`` (``routing.cli``).
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
