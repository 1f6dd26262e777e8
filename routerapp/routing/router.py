"""The Router: fitting, deciding, observing, saving.

See the package docstring (``routerapp.routing``) for the public contract.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from routerapp.routing import policy as pol
from routerapp.routing.costs import CostModel
from routerapp.routing.data import TrainData, build_matrices
from routerapp.routing.features import PromptFeaturizer
from routerapp.routing.irt import MIN_FAMILIES, DifficultyModel
from routerapp.routing.irt import RANK as IRT_RANK
from routerapp.routing.learners import Learner, fit_calibration, get_learner
from routerapp.routing.metrics import cost_of_pass, ece
from routerapp.routing.online import OnlineParams, OnlineState
from routerapp.routing.tables import (
    check_config_ids,
    coerce_candidates,
    normalise_outcomes,
    normalise_prompts,
)
from routerapp.routing.types import (
    Alternative,
    Candidate,
    Constraints,
    Decision,
    RouterError,
    TableError,
    UnknownConfigError,
    family_of,
)

FORMAT_VERSION = 1
_MANIFEST = "router.json"
_ARRAYS = "arrays.npz"


class RouterParams(BaseModel):
    """Fit-time settings of a router (stored with it)."""

    model_config = ConfigDict(extra="forbid")

    dim: int = 64
    folds: int = 3
    policy: Literal["auto", "lambda", "ratio"] = "auto"
    kappa: float = 1.0
    lambda_grid: int = 41
    explore_cost_ratio: float = 3.0
    # Unseen task tags: "anchored" (default) keeps the best single configuration of the training
    # data unless another looks better by a margin of kappa_unseen times the spread of its logit
    # gap to that anchor across the training families (plus what is learned online); "ratio" is
    # the earlier cost / p rule with the learner's own standard error.
    unseen_rule: Literal["anchored", "ratio"] = "anchored"
    kappa_unseen: float = 0.0
    # The anchored rule's guard (``unseen_guard``): a challenger of the anchor must beat it in
    # predicted cost-of-pass by ``unseen_cop_se`` paired standard errors of their training CoP
    # ratio (near-ties are noise), after its predicted family-level advantage is pulled back to
    # the pooled training one unless the training families agree on it (``unseen_family_se``
    # across-family standard errors). Chosen by leave-one-family-out (bench/README.md).
    unseen_cop_se: float = Field(default=0.5, ge=0.0)
    unseen_family_se: float = Field(default=1.0, ge=0.0)
    # p(correct) on an unseen tag: "irt" reads the prompt's difficulty with an item-response
    # model fitted across the training families (``routing.irt``; needs >= 3 of them, else the
    # family mean); "family-mean" gives every prompt the configurations' mean over families.
    unseen_p: Literal["irt", "family-mean"] = "irt"
    irt_rank: int = Field(default=IRT_RANK, ge=1, le=8)
    learner_params: dict[str, Any] = Field(default_factory=dict)
    online: OnlineParams = Field(default_factory=OnlineParams)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


class Router:
    """A fitted router. Build with :func:`fit_router` or :meth:`Router.load`."""

    def __init__(
        self,
        *,
        candidates: list[Candidate],
        datasets: list[str],
        featurizer: PromptFeaturizer,
        learner: Learner,
        costs: CostModel,
        params: RouterParams,
        lam_star: float | None,
        policy_mode: str,
        seed: int = 0,
        fit_info: dict[str, Any] | None = None,
        online: OnlineState | None = None,
        anchor: int | None = None,
        fam_logits: np.ndarray | None = None,
        irt: DifficultyModel | None = None,
        guard: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.candidates = candidates
        self.config_ids = [c.config_id for c in candidates]
        self.index = {c: i for i, c in enumerate(self.config_ids)}
        self.datasets = datasets
        self.known = set(datasets)
        self.featurizer = featurizer
        self.learner = learner
        self.costs = costs
        self.params = params
        self.lam_star = lam_star
        self.policy_mode = policy_mode
        self.seed = seed
        self.fit_info = fit_info or {}
        self.anchor = anchor
        self.irt = irt
        a_n = len(candidates)
        self.fam_logits = (
            np.zeros((a_n, 0)) if fam_logits is None else np.asarray(fam_logits, dtype=float)
        )
        self.tag_cov = _across_family_cov(self.fam_logits)
        if self.fam_logits.shape[1]:
            self._fam_p = _sigmoid(self.fam_logits.mean(1))
            self._fam_se = np.sqrt(np.diag(self.tag_cov))
        self.online = online or self._fresh_online()
        if self.online.tag_cov is None and self.fam_logits.shape[1] >= 2:
            self.online.tag_cov = self.tag_cov
        self._latency = np.asarray(costs.latency, dtype=float)
        # (offset, se) of every configuration's log CoP ratio to the anchor (``unseen_guard``);
        # zeros for a router saved before the guard (the earlier rule).
        self.guard = guard if guard is not None else (np.zeros(a_n), np.zeros(a_n))
        self._prior_margin = self._gap_sd(self.online.prior_cov("", False))

    def _fresh_online(self) -> OnlineState:
        st = OnlineState(len(self.candidates), params=self.params.online, seed=self.seed)
        if self.fam_logits.shape[1] >= 2:
            # A new tag's configurations co-vary as they did across the training families.
            st.tag_cov = self.tag_cov
        return st

    @property
    def anchor_config_id(self) -> str | None:
        """Return the best single configuration of the training data (the unseen-tag anchor)."""
        return None if self.anchor is None else self.config_ids[self.anchor]

    def _anchored(self) -> bool:
        return self.params.unseen_rule == "anchored" and self.anchor is not None

    def unseen_margin(self, tag: str) -> np.ndarray:
        """Return (A,) the logit standard deviation of each configuration's gap to the anchor.

        For a tag not seen in training: from the tag's online posterior when it has one, else from
        its prior (how that gap varied across the training families, widened by the online prior's
        independent part). The anchor's own entry is 0.
        """
        st = self.online.tags.get(tag)
        return self._gap_sd(st.cov if st is not None else self.online.prior_cov(tag, False))

    def _gap_sd(self, cov: np.ndarray) -> np.ndarray:
        a = self.anchor if self.anchor is not None else 0
        d = np.diag(cov)
        return np.sqrt(np.clip(d + d[a] - 2.0 * cov[:, a], 0.0, None))

    def unseen_penalty(self, tag: str) -> np.ndarray:
        """Return (A,) the log cost-of-pass handicap of each configuration against the anchor on
        an unseen ``tag`` (0 for the anchor): the guard's offset plus ``unseen_cop_se`` standard
        errors, scaled by how much of the prior spread of its gap to the anchor the tag's online
        posterior has left (1 before any outcome of the tag, towards 0 as outcomes arrive)."""
        off, se = self.guard
        pen = off + self.params.unseen_cop_se * se
        if tag in self.online.tags:
            pm = self._prior_margin
            fade = np.divide(self.unseen_margin(tag), pm, out=np.zeros_like(pm), where=pm > 0)
            pen = pen * np.clip(fade, 0.0, 1.0)
        return pen

    def _unseen_decision_p(self, p: np.ndarray, tag: str) -> np.ndarray:
        """Return the p used to choose on an unseen tag (anchored rule): lower bounds relative
        to the anchor, whose own p is taken at face value. Dividing p by exp(penalty) raises
        the configuration's cost / p by that factor (``unseen_penalty``)."""
        k = self.params.kappa_unseen
        a = self.anchor
        assert a is not None
        pc = np.clip(p, 1e-9, 1 - 1e-9)
        if k:
            z = np.log(pc / (1 - pc)) - k * self.unseen_margin(tag)
            pc = 0.5 * (1.0 + np.tanh(0.5 * z))
        out = pc * np.exp(-self.unseen_penalty(tag))
        out[..., a] = p[..., a]
        return out

    def _decision_p(
        self,
        p: np.ndarray,
        se: np.ndarray,
        tags: Sequence[str | None],
        explicit_lam: bool = False,
    ) -> np.ndarray:
        """Return the (n, A) p the policy ranks by: LCB on known tags; on unseen ones, the anchored
        lower bounds for the router's own default choice, and p at face value (the family-mean
        estimate) for an explicit lambda, whose caller chose the trade-off (the sweep, AIQ)."""
        pl = pol.lcb(p, se, self.params.kappa)
        if not self._anchored():
            return pl
        for i, t in enumerate(tags):
            tag = t or ""
            if tag not in self.known:
                pl[i] = p[i] if explicit_lam else self._unseen_decision_p(p[i], tag)
        return pl

    # ------------------------------------------------------------------ scoring
    @property
    def default_lambda(self) -> float | None:
        """Return the lambda used when a request gives none (None means the cost / p rule)."""
        return self.lam_star if self.policy_mode == "lambda" else None

    def lambda_for(self, tag: str) -> float | None:
        """Return the default lambda for a prompt with task ``tag``.

        The fitted lambda is the cost-of-pass reachable on the training tags; on a tag never seen
        its scale is unknown (a harder family has a higher one), so such prompts use the
        scale-free cost / p rule.
        """
        return self.default_lambda if tag in self.known else None

    def _static(
        self, feats: np.ndarray, tags: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, se = self.learner.predict(feats, tags)
        cost = self.costs.predict(feats, tags)
        if self._anchored() and self.fam_logits.shape[1] >= 1:
            unseen = np.array([t not in self.known for t in tags], dtype=bool)
            if unseen.any():
                # A family never seen: each configuration's mean logit over the training
                # families (the random-effects prior of a new family), not a text-classifier
                # mixture of the known tags, whose ranking collapsed on families that only
                # look like a known one (LOFO: worst AIQ loss 0.43 -> 0.19, no negative gap).
                p = p.copy()
                se = se.copy()
                p[unseen] = self._fam_p[None, :]
                se[unseen] = self._fam_se[None, :]
                if self.irt is not None and self.params.unseen_p == "irt":
                    # Per prompt: how hard it looks, learned across the training families
                    # (LOFO: static gap_closed > 0 on 5 of 25 families instead of 1, none < 0).
                    p[unseen] = self.irt.predict(feats[unseen])
        return p, se, cost

    def _with_online(
        self, p: np.ndarray, se: np.ndarray, cost: np.ndarray, tags: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.online.tags:
            return p, se, cost
        p = p.copy()
        se = se.copy()
        cost = cost.copy()
        for i, t in enumerate(tags):
            off = self.online.offsets(t)
            if off is None:
                continue
            p[i] = _sigmoid(_logit(p[i]) + off)
            f = self.online.cost_factor(t, t in self.known)
            if f is not None:
                cost[i] = cost[i] * f
        return p, se, cost

    def score(
        self, prompts: list[str], tags: Sequence[str | None]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (p, se, cost), each (n, A), including online corrections."""
        tg = [t or "" for t in tags]
        feats = self.featurizer.transform(prompts)
        p, se, cost = self._static(feats, tg)
        return self._with_online(p, se, cost, tg)

    # ------------------------------------------------------------------ deciding
    def decide(
        self,
        prompt: str,
        task: str | None = None,
        constraints: Constraints | None = None,
        lam: float | None = None,
        *,
        explore: bool = False,
    ) -> Decision:
        """Return the decision for one prompt.

        ``lam`` None uses the router's default policy (its fitted lambda, or cost / p). Raise
        NoAllowedCandidateError when the constraints leave nothing.
        """
        tag = task or ""
        text = prompt or ""
        feats = self.featurizer.transform_one(text)[None, :]
        p, se, cost = self._static(feats, [tag])
        z_static = _logit(p[0])
        p, se, cost = self._with_online(p, se, cost, [tag])
        p, se, cost = p[0], se[0], cost[0]
        mask = pol.allowed(self.candidates, p, cost, self._latency, constraints)
        use_lam = self.lambda_for(tag) if lam is None else lam
        p_dec = self._decision_p(p[None, :], se[None, :], [tag], lam is not None)[0]
        best = int(pol.choose(p_dec, cost, mask, use_lam))
        explored = False
        if explore and tag not in self.known and self.params.online.explore_rule == "settle":
            alt = self._probe(tag, z_static, cost, mask, best, use_lam)
            if alt is not None:
                best, explored = alt, True
        elif explore and self.online.exploring(tag, tag in self.known):
            draw = self.online.sample_offsets(tag, tag in self.known)
            p_ts = _sigmoid(z_static + draw)
            # Bounded: exploring may only try configurations at most explore_cost_ratio times
            # as dear as the greedy choice (a wasted try of a 30x dearer model never pays back).
            cheap_enough = mask & (cost <= self.params.explore_cost_ratio * cost[best])
            ts = int(pol.choose(p_ts, cost, cheap_enough, use_lam))
            if ts != best:
                best, explored = ts, True
        obj = pol.objective(p_dec, cost, use_lam)
        order = [j for j in np.argsort(np.where(mask, obj, np.inf), kind="stable") if mask[j]]
        alts = [
            Alternative(
                self.config_ids[j],
                float(p[j]),
                float(cost[j]),
                float(cost[j] / p[j]) if p[j] > 0 else math.inf,
            )
            for j in order
        ]
        lat = float(self._latency[best]) if math.isfinite(self._latency[best]) else None
        return Decision(
            self.config_ids[best], float(p[best]), float(cost[best]), lat, alts, explored, use_lam
        )

    def _probe(
        self,
        tag: str,
        z_static: np.ndarray,
        cost: np.ndarray,
        mask: np.ndarray,
        greedy: int,
        lam: float | None,
    ) -> int | None:
        """Return the configuration a new tag's decision probes instead of ``greedy``, or None.

        Posterior draws of the tag's offsets give each configuration's probability of being the
        best choice for this prompt; while the greedy choice's is below ``settle`` and the tag's
        probe budget has room, the most probable challenger is tried when its expected gain over
        the tag's horizon outweighs this query's expected loss (``probe_value``; see
        ``routing.online``), never one dearer than ``explore_cost_ratio`` times the greedy choice.
        """
        on = self.online
        if not on.probe_allowed(tag):
            return None
        draws = on.sample_many(tag, False, on.params.n_draws)
        p_ts = _sigmoid(z_static[None, :] + draws)
        cheap_enough = mask & (cost <= self.params.explore_cost_ratio * cost[greedy])
        m = len(draws)
        picks = pol.choose(
            p_ts, np.broadcast_to(cost, p_ts.shape), np.tile(cheap_enough, (m, 1)), lam
        )
        freq = np.bincount(picks, minlength=len(cost)) / m
        if freq[greedy] >= on.params.settle:
            return None
        freq[greedy] = -1.0
        alt = int(np.argmax(freq))
        if freq[alt] <= 0:
            return None
        eta = on.params.probe_value
        if eta > 0:
            # Worth it only when what the probe may find, over as many queries again as the tag
            # has had, outweighs what this query is expected to lose. Both in the linearised
            # cost-of-pass (Dinkelbach: cost - R * p at the greedy choice's own R = cost / p),
            # relative to the greedy cost: the aggregate CoP a query moves, without the heavy
            # tail of cost / p where a draw of p is near 0.
            r_g = cost[greedy] / max(float(p_ts[:, greedy].mean()), 1e-9)
            rel = (cost[alt] - cost[greedy] - r_g * (p_ts[:, alt] - p_ts[:, greedy])) / max(
                float(cost[greedy]), 1e-30
            )
            gain = float(np.clip(-rel, 0.0, None).mean())
            loss = float(rel.mean())
            if gain * eta * on.tags[tag].n_dec < loss:
                return None
        on.count_probe(tag)
        return alt

    def decide_many(
        self,
        prompts: list[str],
        tags: Sequence[str | None],
        lam: float | None = None,
        constraints: Constraints | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (choice index (n,), p (n, A), cost (n, A)) for a batch, no exploration."""
        p, se, cost = self.score(prompts, tags)
        mask = pol.allowed(self.candidates, p, cost, self._latency, constraints)
        pl = self._decision_p(p, se, tags, lam is not None)
        if lam is not None:
            return pol.choose(pl, cost, mask, lam), p, cost
        known = np.array([(t or "") in self.known for t in tags], dtype=bool)
        choice = np.zeros(len(tags), dtype=int)
        if known.any():
            choice[known] = pol.choose(pl[known], cost[known], mask[known], self.default_lambda)
        if (~known).any():
            choice[~known] = pol.choose(pl[~known], cost[~known], mask[~known], None)
        return choice, p, cost

    def sweep_lambdas(self, n_points: int) -> list[float]:
        """Return ``n_points`` lambdas from 'cheapest' to 'most accurate' (geometric spacing)."""
        c = np.exp(self.costs.alpha) * self.costs.smear[:, None]
        lo = float(c.min()) / 10.0  # below every cost difference: always the cheapest
        hi = float(c.max()) * 1e4  # a 1% gain in p outweighs any cost difference
        if n_points <= 1:
            return [self.lam_star or float(np.sqrt(lo * hi))]
        return list(np.geomspace(lo, hi, n_points))

    def sweep(
        self,
        prompts: list[str],
        tags: Sequence[str | None],
        n_points: int,
        constraints: Constraints | None = None,
    ) -> list[np.ndarray]:
        """Return one choice vector per operating point (cheap to accurate)."""
        p, se, cost = self.score(prompts, tags)
        pl = self._decision_p(p, se, tags, explicit_lam=True)
        mask = pol.allowed(self.candidates, p, cost, self._latency, constraints)
        return [pol.choose(pl, cost, mask, lam) for lam in self.sweep_lambdas(n_points)]

    # ------------------------------------------------------------------ online
    def observe(
        self,
        prompt: str,
        task: str | None,
        config_id: str,
        correct: bool | float,
        cost_usd: float | None,
    ) -> None:
        """Update the router with one graded outcome of ``config_id`` on ``prompt``.

        Raise UnknownConfigError for an unknown id and ValueError for ``correct`` outside [0, 1].
        """
        a = self.index.get(config_id)
        if a is None:
            raise UnknownConfigError(f"unknown config id {config_id!r}")
        y = float(correct)
        if not 0.0 <= y <= 1.0:
            raise ValueError("correct must be a bool or a number in [0, 1]")
        tag = task or ""
        text = prompt or ""
        feats = self.featurizer.transform_one(text)[None, :]
        p, _, cost = self._static(feats, [tag])
        self.online.update(
            tag, tag in self.known, a, float(_logit(p[0, a])), y, cost_usd, float(cost[0, a])
        )

    def reset_online(self) -> None:
        """Forget everything learned online."""
        self.online = self._fresh_online()

    # ------------------------------------------------------------------ persistence
    def _manifest_and_arrays(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        f_meta, f_arr = self.featurizer.state()
        l_meta, l_arr = self.learner.state()
        c_meta, c_arr = self.costs.state()
        arrays: dict[str, np.ndarray] = {}
        arrays.update(f_arr)
        arrays.update({f"learner_{k}": v for k, v in l_arr.items()})
        arrays.update(c_arr)
        arrays["router_fam_logits"] = self.fam_logits
        arrays["router_unseen_offset"], arrays["router_unseen_se"] = self.guard
        if self.irt is not None:
            arrays.update({f"router_irt_{k}": v for k, v in self.irt.state().items()})
        manifest = {
            "format_version": FORMAT_VERSION,
            "kind": "costpass-router",
            "candidates": [c.to_dict() for c in self.candidates],
            "datasets": self.datasets,
            "params": self.params.model_dump(),
            "seed": self.seed,
            "lam_star": self.lam_star,
            "policy_mode": self.policy_mode,
            "anchor": self.anchor_config_id,
            "featurizer": f_meta,
            "learner": {
                "slug": self.learner.slug,
                "params": self.learner.params.model_dump(),
                "calib": list(self.learner.calib),
                "meta": l_meta,
                "arrays": sorted(l_arr),
            },
            "costs": c_meta,
            "fit_info": self.fit_info,
            "online": self.online.to_json(),
        }
        return manifest, arrays

    def save(self, path: str | Path) -> None:
        """Write the router to directory ``path`` (created if needed): router.json + arrays.npz."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        manifest, arrays = self._manifest_and_arrays()
        with open(d / _ARRAYS, "wb") as fh:
            np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        (d / _MANIFEST).write_text(json.dumps(manifest))

    def to_bytes(self) -> bytes:
        """Return the router as one zip archive (same two files as ``save``)."""
        manifest, arrays = self._manifest_and_arrays()
        arr = io.BytesIO()
        np.savez_compressed(arr, **arrays)  # type: ignore[arg-type]
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr(_MANIFEST, json.dumps(manifest))
            zf.writestr(_ARRAYS, arr.getvalue())
        return buf.getvalue()

    @classmethod
    def _from_parts(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]) -> Router:
        if manifest.get("kind") != "costpass-router":
            raise RouterError("not a costpass router model")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise RouterError(f"unsupported router format version {manifest.get('format_version')}")
        cands = [Candidate(**c) for c in manifest["candidates"]]
        datasets = list(manifest["datasets"])
        params = RouterParams(**manifest["params"])
        feat = PromptFeaturizer.from_state(manifest["featurizer"], arrays)
        lm = manifest["learner"]
        lcls = get_learner(lm["slug"])
        learner = lcls(cands, datasets, lcls.Params(**lm["params"]))
        learner.calib = (float(lm["calib"][0]), float(lm["calib"][1]))
        learner.load_state(lm["meta"], {k: arrays[f"learner_{k}"] for k in lm["arrays"]})
        costs = CostModel.from_state(manifest["costs"], arrays)
        online = OnlineState.from_json(manifest["online"]) if manifest.get("online") else None
        ids = [c.config_id for c in cands]
        anchor_id = manifest.get("anchor")  # absent in routers saved before the anchored rule
        return cls(
            candidates=cands,
            datasets=datasets,
            featurizer=feat,
            learner=learner,
            costs=costs,
            params=params,
            lam_star=manifest["lam_star"],
            policy_mode=manifest["policy_mode"],
            seed=int(manifest.get("seed", 0)),
            fit_info=manifest.get("fit_info", {}),
            online=online,
            anchor=ids.index(anchor_id) if anchor_id in ids else None,
            fam_logits=arrays.get("router_fam_logits"),
            guard=(
                (arrays["router_unseen_offset"], arrays["router_unseen_se"])
                if "router_unseen_offset" in arrays
                else None
            ),
            irt=(
                DifficultyModel.from_state(
                    {k[11:]: v for k, v in arrays.items() if k[:11] == "router_irt_"}
                )
                if "router_irt_alpha" in arrays
                else None
            ),
        )

    @classmethod
    def load(cls, path: str | Path) -> Router:
        """Read a router written by ``save``; raise RouterError when ``path`` holds none."""
        d = Path(path)
        if not (d / _MANIFEST).is_file() or not (d / _ARRAYS).is_file():
            raise RouterError(f"no router model in {d} (expected {_MANIFEST} and {_ARRAYS})")
        try:
            manifest = json.loads((d / _MANIFEST).read_text())
            with np.load(d / _ARRAYS, allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise RouterError(f"cannot read router model in {d}: {exc}") from exc
        return cls._from_parts(manifest, arrays)

    @classmethod
    def from_bytes(cls, blob: bytes) -> Router:
        """Inverse of ``to_bytes``."""
        try:
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                manifest = json.loads(zf.read(_MANIFEST))
                with np.load(io.BytesIO(zf.read(_ARRAYS)), allow_pickle=False) as npz:
                    arrays = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise RouterError(f"cannot read router bytes: {exc}") from exc
        return cls._from_parts(manifest, arrays)


# ---------------------------------------------------------------------------------------- fitting


def _fit_parts(
    data: TrainData, learner_slug: str, params: RouterParams
) -> tuple[Learner, CostModel]:
    lcls = get_learner(learner_slug)
    learner = lcls(data.candidates, data.datasets, lcls.Params(**params.learner_params))
    learner.fit(data)
    costs = CostModel().fit(data, data.candidates, data.datasets)
    return learner, costs


def _realised(
    data: TrainData, p_hat: np.ndarray, c_hat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    obs = data.w > 0
    y = np.where(obs, data.y, p_hat)
    c = np.where(obs & np.isfinite(data.cost), data.cost, c_hat)
    return y, c


def single_threaded() -> contextlib.AbstractContextManager[Any]:
    """Return a context limiting BLAS to one thread.

    The matrices here are small; on a shared 2-core machine multithreaded BLAS made fitting about
    ten times slower (37 s vs 3.7 s on routerbench-dev).
    """
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


def fit_router(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    candidates: pd.DataFrame | list[Candidate],
    *,
    learner: str = "meta-logit",
    seed: int = 0,
    params: RouterParams | dict[str, Any] | None = None,
    unknown_configs: Literal["error", "drop"] = "error",
) -> Router:
    """Fit a router on an outcome table (see routing.tables for schemas) and return it.

    Raise TableError on malformed tables, UnknownConfigError when outcomes name a config id that is
    not a candidate (unless ``unknown_configs='drop'``), UnknownLearnerError for a bad slug.
    """
    with single_threaded():
        return _fit_router(outcomes, prompts, candidates, learner, seed, params, unknown_configs)


def _fit_router(
    outcomes: pd.DataFrame,
    prompts: pd.DataFrame | None,
    candidates: pd.DataFrame | list[Candidate],
    learner: str,
    seed: int,
    params: RouterParams | dict[str, Any] | None,
    unknown_configs: str,
) -> Router:
    t0 = time.perf_counter()
    prm = params if isinstance(params, RouterParams) else RouterParams(**(params or {}))
    get_learner(learner)  # fail fast on a bad slug
    cands = coerce_candidates(candidates)
    out = normalise_outcomes(outcomes)
    if unknown_configs == "error":
        check_config_ids(out, cands, "outcomes")
    else:
        out = out[out["config_id"].isin({c.config_id for c in cands})]
        if out.empty:
            raise TableError("outcomes: no rows for the given candidates")
    pr = (
        normalise_prompts(prompts)
        if prompts is not None
        else normalise_prompts(out[["prompt_uid", "dataset"]])
    )
    uids, tags, texts, mats = build_matrices(out, pr, cands)
    datasets = sorted(set(tags))
    d_index = {d: i for i, d in enumerate(datasets)}
    featurizer = PromptFeaturizer(dim=prm.dim, seed=seed).fit(texts)
    feats = featurizer.transform(texts)
    data = TrainData(
        prompt_uids=uids,
        tags=tags,
        texts=texts,
        feats=feats,
        y=mats["y"],
        w=mats["w"],
        cost=mats["cost"],
        in_tok=mats["in_tok"],
        out_tok=mats["out_tok"],
        latency=mats["latency"],
        candidates=cands,
        datasets=datasets,
        d_idx=np.array([d_index[t] for t in tags], dtype=int),
    )
    p_n, a_n = data.y.shape
    rng = np.random.default_rng(seed)
    info: dict[str, Any] = {
        "n_prompts": p_n,
        "n_rows": len(out),
        "n_configs": a_n,
        "datasets": {d: int((data.d_idx == i).sum()) for i, d in enumerate(datasets)},
        "learner": learner,
    }
    # Cross-fitting: out-of-fold predictions calibrate p and choose the policy / lambda honestly.
    folds = prm.folds if p_n >= 4 * max(prm.folds, 1) else 0
    calib = (1.0, 0.0)
    lam_star: float | None = None
    mode = "lambda" if prm.policy == "lambda" else "ratio"
    if folds >= 2:
        fold_of = rng.permutation(p_n) % folds
        base_oof = np.zeros((p_n, a_n))
        part_oof = np.zeros((p_n, a_n))
        se_oof = np.zeros((p_n, a_n))
        c_oof = np.zeros((p_n, a_n))
        for f in range(folds):
            tr = np.flatnonzero(fold_of != f)
            te = np.flatnonzero(fold_of == f)
            lf, cf = _fit_parts(data.subset(tr), learner, prm)
            te_tags = [tags[i] for i in te]
            base_oof[te], part_oof[te] = lf.calibration_parts(feats[te], te_tags)
            _, se_oof[te] = lf.predict(feats[te], te_tags)
            c_oof[te] = cf.predict(feats[te], te_tags)
        if learner != "knn":
            calib = fit_calibration(
                base_oof.ravel(), part_oof.ravel(), data.y.ravel(), data.w.ravel()
            )
        p_oof = _sigmoid(base_oof + calib[0] * part_oof + calib[1])
        info["oof_ece"] = ece(p_oof, data.y, weights=data.w)
        lam_star, mode, pol_info = _choose_policy(data, p_oof, se_oof, c_oof, prm)
        info.update(pol_info)
    learner_obj, costs = _fit_parts(data, learner, prm)
    learner_obj.calib = calib
    info["calibration"] = list(calib)
    if lam_star is None:
        # No cross-fitting possible (tiny table): in-sample best-single CoP as lambda.
        y_r, c_r = _realised(data, np.zeros_like(data.y), costs.predict(feats, tags))
        col = [cost_of_pass(c_r[:, j].sum(), y_r[:, j].sum()) for j in range(a_n)]
        finite = [c for c in col if math.isfinite(c)]
        lam_star = min(finite) if finite else None
        if prm.policy == "lambda" and lam_star is not None:
            mode = "lambda"
    anchor = _anchor(data)
    fam_logits = family_logits(data)
    info["anchor"] = None if anchor is None else cands[anchor].config_id
    info["n_families"] = int(fam_logits.shape[1])
    irt = None
    if prm.unseen_p == "irt" and fam_logits.shape[1] >= MIN_FAMILIES:
        t_irt = time.perf_counter()
        irt = DifficultyModel.fit(
            feats, data.y, data.w, [family_of(t) for t in tags], rank=prm.irt_rank
        )
        info["irt_seconds"] = time.perf_counter() - t_irt
    guard = None
    if anchor is not None:
        t_g = time.perf_counter()
        p_unseen = (
            irt.predict(feats)
            if irt is not None
            else np.broadcast_to(_sigmoid(fam_logits.mean(1)), data.y.shape)
        )
        no_tag = "" if "" not in d_index else "\x00unseen"
        guard = unseen_guard(
            data, anchor, p_unseen, costs.predict(feats, [no_tag] * p_n), prm.unseen_family_se
        )
        info["guard_seconds"] = time.perf_counter() - t_g
    info["fit_seconds"] = time.perf_counter() - t0
    return Router(
        candidates=cands,
        datasets=datasets,
        featurizer=featurizer,
        learner=learner_obj,
        costs=costs,
        params=prm,
        lam_star=lam_star,
        policy_mode=mode,
        seed=seed,
        fit_info=info,
        anchor=anchor,
        fam_logits=fam_logits,
        irt=irt,
        guard=guard,
    )


def unseen_guard(
    data: TrainData,
    anchor: int,
    p_unseen: np.ndarray,
    c_unseen: np.ndarray,
    kappa_family: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (offset, se), each (A,), the guard of the anchored rule on an unseen tag.

    Both are in log cost-of-pass relative to the anchor. The anchor is the best single
    configuration of the *pooled* training prompts, while the unseen-tag p (family mean or
    item-response model) weighs the training *families* equally; where the two disagree, the
    family view wins only if the families agree. ``offset[j] = b*[j] - pred[j] >= 0``, where
    ``pred`` is the log CoP ratio to the anchor that the unseen-tag predictions ``p_unseen``,
    ``c_unseen`` ((P, A), on the training prompts) give over the pooled training prompts, and
    ``b* = max(pred, min(pooled, m + kappa_family * se_m))`` with ``pooled`` the realised one
    (>= 0: the anchor is the pooled best) and ``m``, ``se_m`` the mean and standard error of
    the realised ratio across the training families. ``se`` is the paired standard error of the
    pooled realised ratio (delta method over prompts): a gap smaller than that is noise.
    """
    obs = (data.w > 0) & np.isfinite(data.cost)
    a_n = data.y.shape[1]
    y = np.where(obs, data.y, 0.0)
    c = np.where(obs, data.cost, 0.0)

    def log_cop(rows: np.ndarray, yy: np.ndarray, cc: np.ndarray) -> np.ndarray:
        n = np.maximum((obs & rows[:, None]).sum(0), 1)
        ym = np.where(obs & rows[:, None], yy, 0.0).sum(0) / n
        cm = np.where(obs & rows[:, None], cc, 0.0).sum(0) / n
        with np.errstate(divide="ignore"):
            out = np.log(np.maximum(cm, 1e-300)) - np.log(np.maximum(ym, 1e-3))
        return np.where((obs & rows[:, None]).any(0), out - out[anchor], np.nan)

    every = np.ones(len(y), dtype=bool)
    pooled = log_cop(every, y, c)
    pred = log_cop(every, p_unseen, c_unseen)
    fam_of_tag = np.array([family_of(t) for t in data.datasets], dtype=object)
    fam_of_row = fam_of_tag[data.d_idx]
    per_fam = np.array([log_cop(fam_of_row == f, y, c) for f in sorted(set(fam_of_row))])
    n_f = np.isfinite(per_fam).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = np.nanmean(np.where(n_f >= 2, per_fam, 0.0), axis=0)
        sd = np.sqrt(np.nansum((per_fam - m) ** 2, axis=0) / np.maximum(n_f - 1, 1))
        se_m = np.where(n_f >= 2, sd / np.sqrt(np.maximum(n_f, 1)), np.inf)
    upper = np.where(np.isfinite(se_m), m + kappa_family * se_m, np.inf)
    b_star = np.maximum(pred, np.minimum(pooled, upper))
    offset = np.where(np.isfinite(b_star - pred), b_star - pred, 0.0)
    offset[anchor] = 0.0
    # Paired standard error of the pooled log CoP ratio (delta method, rows where both ran).
    se = np.zeros(a_n)
    oa = obs[:, anchor]
    for j in range(a_n):
        both = obs[:, j] & oa
        nb = int(both.sum())
        if j == anchor or nb < 2:
            continue
        cj, ca = c[both, j], c[both, anchor]
        yj, ya = y[both, j], y[both, anchor]
        psi = (
            cj / max(cj.mean(), 1e-300)
            - yj / max(yj.mean(), 1e-3)
            - ca / max(ca.mean(), 1e-300)
            + ya / max(ya.mean(), 1e-3)
        )
        se[j] = float(psi.std() / np.sqrt(nb))
    return offset, se


def _anchor(data: TrainData) -> int | None:
    """Return the best single configuration on the training outcomes (lowest realised CoP over
    the prompts it ran on; ties to the more accurate one), as the evaluation's baseline picks it."""
    obs = data.w > 0
    n = obs.sum(0)
    if not n.any():
        return None
    y = np.where(obs, data.y, 0.0).sum(0) / np.maximum(n, 1)
    c_ok = obs & np.isfinite(data.cost)
    c = np.where(c_ok, data.cost, 0.0).sum(0) / np.maximum(c_ok.sum(0), 1)
    cop = np.where((y > 0) & (n > 0), c / np.where(y > 0, y, 1.0), np.inf)
    if not np.isfinite(cop).any():
        return int(np.argmax(np.where(n > 0, y, -1.0)))
    return int(np.lexsort((-y, cop))[0])


def family_logits(data: TrainData) -> np.ndarray:
    """Return (A, F) smoothed logits of p(correct) of every configuration on each training
    family (``types.family_of`` of the tags; a configuration never run on a family gets its mean
    over the others)."""
    fam_of_tag = [family_of(t) for t in data.datasets]
    fams = sorted(set(fam_of_tag))
    a_n = data.y.shape[1]
    lg = np.full((a_n, len(fams)), np.nan)
    for f, fam in enumerate(fams):
        rows = np.isin(data.d_idx, [i for i, x in enumerate(fam_of_tag) if x == fam])
        s = (data.w[rows] * data.y[rows]).sum(0)
        n = data.w[rows].sum(0)
        p = (s + 0.5) / (n + 1.0)
        lg[:, f] = np.where(n > 0, np.log(p / (1 - p)), np.nan)
    seen = np.isfinite(lg)
    row_mean = np.where(seen, lg, 0.0).sum(1) / np.maximum(seen.sum(1), 1)
    return np.where(seen, lg, row_mean[:, None])


def _across_family_cov(fam_logits: np.ndarray) -> np.ndarray:
    """Return the (A, A) covariance of the configurations' logits across families (equal weights)."""
    a_n, f_n = fam_logits.shape
    if f_n < 2:
        return np.zeros((a_n, a_n))
    dev = fam_logits - fam_logits.mean(1, keepdims=True)
    return (dev @ dev.T) / f_n


def _choose_policy(
    data: TrainData, p_oof: np.ndarray, se_oof: np.ndarray, c_oof: np.ndarray, prm: RouterParams
) -> tuple[float | None, str, dict[str, Any]]:
    """Pick lambda (and lambda vs ratio when policy='auto') by realised out-of-fold CoP."""
    y_r, c_r = _realised(data, p_oof, c_oof)
    rows = np.arange(len(y_r))
    pl = pol.lcb(p_oof, se_oof, prm.kappa)
    mask = np.ones_like(pl, dtype=bool)

    def realised(choice: np.ndarray) -> float:
        return cost_of_pass(float(c_r[rows, choice].sum()), float(y_r[rows, choice].sum()))

    cop_ratio = realised(pol.choose(pl, c_oof, mask, None))
    col = [
        cost_of_pass(float(c_r[:, j].sum()), float(y_r[:, j].sum())) for j in range(y_r.shape[1])
    ]
    finite = [c for c in col if math.isfinite(c)]
    ref = min(finite) if finite else 0.0
    if not ref > 0:  # a free configuration: scale lambda by the typical predicted cost instead
        ref = max(float(np.median(c_oof)) * 2, 1e-9)
    grid = np.geomspace(ref / 8, ref * 8, prm.lambda_grid)
    cops = np.array([realised(pol.choose(pl, c_oof, mask, float(lam))) for lam in grid])
    # Smooth over neighbouring lambdas so a lucky spike on the training folds is not chosen.
    logc = np.log(
        np.where(
            np.isfinite(cops),
            cops,
            np.nanmax(cops[np.isfinite(cops)]) * 10 if np.isfinite(cops).any() else 1.0,
        )
    )
    sm = np.convolve(np.pad(logc, 1, mode="edge"), np.ones(3) / 3, mode="valid")
    k = int(np.argmin(sm))
    lam = float(grid[k])
    cop_lam = float(cops[k])
    if prm.policy == "ratio":
        mode = "ratio"
    elif prm.policy == "lambda":
        mode = "lambda"
    else:
        mode = "lambda" if cop_lam <= cop_ratio else "ratio"
    info = {
        "oof_cop_ratio": cop_ratio,
        "oof_cop_lambda": cop_lam,
        "oof_cop_best_single": ref,
        "lambda_star": lam,
        "policy_mode": mode,
    }
    return lam, mode, info
