"""``costpass-router``: fit, decide, evaluate and serve the router from the command line.

Commands (see the issue's CLI contract):

- ``fit --suite DIR --out MODEL_DIR [--learner SLUG] [--seed N]``: learn from
  ``DIR/candidates.csv``, ``DIR/train_outcomes.parquet`` and ``DIR/train_prompts.parquet``.
- ``decide --model MODEL_DIR --prompts FILE.parquet --out decisions.csv [--lambda X | --sweep N]``:
  write ``prompt_uid,config_id`` (``--sweep N``: N operating points from cheapest to most accurate,
  with a ``point`` column 0..N-1). Reads nothing but the prompts file and the model directory.
- ``evaluate --suite DIR --model MODEL_DIR [--json OUT] [--no-online]``: print the router's and the
  baselines' metrics on ``DIR/test_outcomes.parquet``.
- ``evaluate --leave-one-family-out SUITE... [--data DIR] [--online-curve] [--seeds N]
  [--family F] [--json OUT]``: for every task family of each suite directory (train and test
  pooled), outcome source (``routing.transfer.SOURCES``, built from ``--data``) or external source
  fetched from GitHub (``NAME=DIR``, ``routing.external.EXTERNAL``; priced and pooled with
  ``--data`` when given), fit on the other
  families and print, per held-out family: static / online gap_closed, gap_closed after the first
  50 / 100 / 200 / 500 online queries (``--online-curve``), AIQ vs the zero router, accuracy,
  CoP, and the baselines (best single chosen on train, kNN, random, min-CoP oracle).
- ``serve-jsonl --model MODEL_DIR [--no-explore]``: one JSON object per line on stdin, one answer
  per line on stdout (flushed). ``{"op":"decide","prompt_uid":..,"prompt":..,"dataset":..}`` ->
  ``{"prompt_uid":..,"config_id":..,"p_correct":..,"cost_usd":..}``;
  ``{"op":"observe","prompt_uid":..,"config_id":..,"correct":..,"cost_usd":..}`` -> ``{"ok":true}``.
  A bad line gets ``{"error": "..."}`` and serving goes on. Optional fields: ``lambda`` and
  ``constraints`` (``allowed_config_ids, allowed_models, max_cost_usd, max_latency_s,
  min_accuracy``) on decide; ``dataset`` / ``prompt`` on observe for a prompt_uid not decided here.

Errors (missing files, unknown config ids, malformed tables, bad arguments) exit with status 2 and
a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, NoReturn, TextIO

import numpy as np
import pandas as pd
from pydantic import ValidationError

from routerapp.routing import transfer
from routerapp.routing.evaluation import evaluate
from routerapp.routing.external import EXTERNAL
from routerapp.routing.router import Router, fit_router, single_threaded
from routerapp.routing.tables import load_suite, normalise_prompts, read_table
from routerapp.routing.types import Constraints, RouterError

PROG = "costpass-router"
_CACHE_SIZE = 100_000  # prompt_uids remembered between decide and observe in serve-jsonl


class _Fail(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, status 2 (argparse prints usage too)
        raise _Fail(message)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="costpass meta-learned cost-of-pass router")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    f = sub.add_parser("fit", help="learn a router from a suite directory")
    f.add_argument("--suite", required=True, type=Path)
    f.add_argument("--out", required=True, type=Path)
    f.add_argument("--learner", default="meta-logit")
    f.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("decide", help="route a prompts file")
    d.add_argument("--model", required=True, type=Path)
    d.add_argument("--prompts", required=True, type=Path)
    d.add_argument("--out", required=True, type=Path)
    g = d.add_mutually_exclusive_group()
    g.add_argument("--lambda", dest="lam", type=float, default=None)
    g.add_argument("--sweep", type=int, default=None)

    e = sub.add_parser(
        "evaluate",
        help="score a router and baselines on a suite's test split, or leave one family out",
    )
    e.add_argument("--suite", type=Path, default=None)
    e.add_argument("--model", type=Path, default=None)
    e.add_argument("--json", type=Path, default=None)
    e.add_argument("--no-online", action="store_true", help="skip the online replay")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--leave-one-family-out",
        dest="lofo",
        nargs="+",
        metavar="SUITE",
        default=None,
        help="suite directories, outcome-source names (with --data) or NAME=DIR of an external "
        "source fetched to DIR: fit on every other task family, score the held-out one",
    )
    e.add_argument(
        "--data",
        type=Path,
        default=None,
        help="directory of the public outcome tables (dev_outcomes_single.parquet...) for sources",
    )
    e.add_argument(
        "--online-curve",
        action="store_true",
        help="also replay each held-out family online: gap_closed after 50/100/200/500 queries",
    )
    e.add_argument("--seeds", type=int, default=3, help="online replay orders per family")
    e.add_argument(
        "--family", action="append", default=None, help="only this held-out family (repeatable)"
    )

    s = sub.add_parser("serve-jsonl", help="online mode over stdin/stdout")
    s.add_argument("--model", required=True, type=Path)
    s.add_argument("--no-explore", action="store_true")
    return p


def _cmd_fit(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    router = fit_router(
        suite.train_outcomes,
        suite.train_prompts,
        suite.candidates,
        learner=args.learner,
        seed=args.seed,
    )
    router.save(args.out)
    info = router.fit_info
    lam = router.lam_star
    print(
        f"fitted {info['learner']} on {info['n_prompts']} prompts x {info['n_configs']} configs "
        f"in {info['fit_seconds']:.1f}s; policy {router.policy_mode}"
        + (f" (lambda {lam:.3g})" if router.policy_mode == "lambda" and lam else "")
        + f"; saved to {args.out}"
    )
    return 0


def _cmd_decide(args: argparse.Namespace) -> int:
    if args.lam is not None and not args.lam > 0:
        raise _Fail("--lambda must be > 0")
    if args.sweep is not None and args.sweep < 1:
        raise _Fail("--sweep must be >= 1")
    router = Router.load(args.model)
    prompts = normalise_prompts(read_table(args.prompts), str(args.prompts))
    texts = prompts["prompt"].tolist()
    tags = prompts["dataset"].tolist()
    ids = router.config_ids
    with single_threaded():
        if args.sweep is None:
            choice, _, _ = router.decide_many(texts, tags, lam=args.lam)
            out = pd.DataFrame(
                {"prompt_uid": prompts["prompt_uid"], "config_id": [ids[j] for j in choice]}
            )
        else:
            frames = []
            for k, ch in enumerate(router.sweep(texts, tags, args.sweep)):
                frames.append(
                    pd.DataFrame(
                        {
                            "prompt_uid": prompts["prompt_uid"],
                            "config_id": [ids[j] for j in ch],
                            "point": k,
                        }
                    )
                )
            out = pd.concat(frames, ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.to_csv(args.out, index=False)
    return 0


def _fmt(v: Any, kind: str) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if kind == "e":
        return f"{v:.3e}"
    if kind == "f":
        return f"{v:.3f}"
    return str(v)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.lofo is not None:
        return _cmd_lofo(args)
    if args.suite is None or args.model is None:
        raise _Fail("evaluate needs --suite and --model (or --leave-one-family-out SUITE...)")
    suite = load_suite(args.suite, need_test=True)
    router = Router.load(args.model)
    assert suite.test_outcomes is not None
    unknown = sorted(set(suite.test_outcomes["config_id"]) - set(router.config_ids))
    if unknown:
        print(
            f"note: {len(unknown)} test config id(s) unknown to the model are ignored",
            file=sys.stderr,
        )
    res = evaluate(
        router,
        suite.test_outcomes,
        suite.test_prompts,
        suite.train_outcomes,
        suite.train_prompts,
        online=not args.no_online,
        seed=args.seed,
    )
    print(
        f"suite {args.suite} | {res['n_prompts']} test prompts x {res['n_configs']} configs | "
        f"zero-router AIQ {_fmt(res['zero_router_aiq'], 'f')}"
    )
    head = f"{'policy':26s} {'accuracy':>8s} {'USD/query':>10s} {'CoP':>10s} {'gap_closed':>10s} {'AIQ':>6s}"
    print(head)
    for name, row in res["policies"].items():
        print(
            f"{name:26s} {_fmt(row['accuracy'], 'f'):>8s} {_fmt(row['mean_cost'], 'e'):>10s} "
            f"{_fmt(row['cop'], 'e'):>10s} {_fmt(row['gap_closed'], 'f'):>10s} {_fmt(row.get('aiq'), 'f'):>6s}"
        )
    r = res["policies"]["router"]
    print(
        f"router calibration: ECE {_fmt(r['ece_all'], 'f')} (all pairs), {_fmt(r['ece_chosen'], 'f')} (chosen)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=_json_default))
    return 0


def _lofo_tables(spec: str, data: Path | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = Path(spec)
    if path.is_dir():
        return transfer.load_suite_pooled(path)
    ext = transfer.parse_external(spec)
    if ext is not None:
        return transfer.load_external(ext[0], ext[1], data)
    if spec in transfer.SOURCES:
        if data is None:
            raise _Fail(f"outcome source {spec!r} needs --data DIR (the public outcome tables)")
        return transfer.load_source(data, spec)
    raise _Fail(
        f"{spec}: neither a suite directory, an outcome source "
        f"({', '.join(sorted(transfer.SOURCES))}) nor NAME=DIR of an external source "
        f"({', '.join(sorted(EXTERNAL))})"
    )


_LOFO_HEAD = (
    f"{'source':18s} {'family':12s} {'n':>5s} {'static':>7s} {'online':>7s} {'@50':>6s} "
    f"{'@100':>6s} {'@200':>6s} {'@500':>6s} {'AIQ':>6s} {'zero':>6s} {'acc':>6s} "
    f"{'CoP':>9s} {'best1 CoP':>9s} {'kNN':>7s} {'random':>7s} {'oracle':>9s}"
)


def _g(v: Any) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:+.2f}"


def _lofo_line(r: dict[str, Any]) -> str:
    st = r["static"]
    on = r.get("online") or {}
    cv = on.get("curve", {})
    return (
        f"{r['source'][:18]:18s} {r['held_out'][:12]:12s} {r['n_test']:5d} "
        f"{_g(st['gap_closed']):>7s} {_g(on.get('gap_closed')):>7s} "
        + " ".join(f"{_g(cv.get(str(k))):>6s}" for k in transfer.CURVE_POINTS)
        + f" {_fmt(st['aiq'], 'f'):>6s} {_fmt(r['aiq_zero'], 'f'):>6s} {_fmt(st['accuracy'], 'f'):>6s} "
        f"{_fmt(st['cop'], 'e'):>9s} {_fmt(r['best_single_train']['cop'], 'e'):>9s} "
        f"{_g((r.get('knn') or {}).get('gap_closed')):>7s} {_g(r['random']['gap_closed']):>7s} "
        f"{_fmt(r['oracle']['cop'], 'e'):>9s}"
    )


def _cmd_lofo(args: argparse.Namespace) -> int:
    if args.seeds < 1:
        raise _Fail("--seeds must be >= 1")
    tables = [(spec, _lofo_tables(spec, args.data)) for spec in args.lofo]
    print(
        "leave-one-family-out: gap_closed vs the best single configuration chosen on the "
        "training families (static, online replay, and online over the first k queries)"
    )
    print(_LOFO_HEAD, flush=True)
    rows: list[dict[str, Any]] = []
    for spec, (o, p) in tables:
        name = Path(spec).name if Path(spec).is_dir() else spec.partition("=")[0]
        rows += transfer.lofo(
            o,
            p,
            name=name,
            only=args.family,
            seeds=args.seeds,
            online=args.online_curve,
            on_row=lambda r: print(_lofo_line(r), flush=True),
        )
    summ = transfer.summarise(rows)
    med = {k: v["median"] if isinstance(v, dict) else None for k, v in summ.items()}
    print(
        f"median static {_g(med['static'])}, online {_g(med['online'])}, kNN {_g(med['knn'])}; "
        f"floor (static gap_closed >= 0 and AIQ >= zero router) met on {summ['floor_met']} of "
        f"{summ['n_families']} families (gap {summ['floor_gap_met']}, AIQ {summ['floor_aiq_met']})"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"rows": rows, "summary": summ}, indent=1, default=_json_default)
        )
    return 0


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class JsonlServer:
    """The serve-jsonl loop, separated from stdin/stdout so it can be driven in-process."""

    def __init__(self, router: Router, *, explore: bool = True) -> None:
        self.router = router
        self.explore = explore
        self.seen: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def handle(self, line: str) -> dict[str, Any]:
        """Return the answer object for one input line (never raises for bad input)."""
        try:
            msg = json.loads(line)
        except json.JSONDecodeError as exc:
            return {"error": f"invalid JSON: {exc.msg}"}
        if not isinstance(msg, dict):
            return {"error": "expected a JSON object"}
        op = msg.get("op")
        try:
            if op == "decide":
                return self._decide(msg)
            if op == "observe":
                return self._observe(msg)
        except (RouterError, ValidationError, ValueError, TypeError) as exc:
            return {"error": _one_line(exc)}
        return {"error": f"unknown op {op!r}; expected 'decide' or 'observe'"}

    def _text(self, msg: dict[str, Any], key: str) -> str:
        v = msg.get(key)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise TypeError(f"{key} must be a string")
        return v

    def _decide(self, msg: dict[str, Any]) -> dict[str, Any]:
        uid = msg.get("prompt_uid")
        if uid is None:
            raise ValueError("decide needs a prompt_uid")
        uid = str(uid)
        prompt = self._text(msg, "prompt")
        tag = self._text(msg, "dataset")
        lam = msg.get("lambda")
        if lam is not None and (
            not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam > 0
        ):
            raise ValueError("lambda must be a number > 0")
        cons = msg.get("constraints")
        constraints = None
        if cons is not None:
            if not isinstance(cons, dict):
                raise TypeError("constraints must be an object")
            constraints = Constraints(**cons)
        d = self.router.decide(
            prompt, tag, constraints, None if lam is None else float(lam), explore=self.explore
        )
        self.seen[uid] = (prompt, tag)
        self.seen.move_to_end(uid)
        while len(self.seen) > _CACHE_SIZE:
            self.seen.popitem(last=False)
        return {
            "prompt_uid": uid,
            "config_id": d.config_id,
            "p_correct": d.p_correct,
            "cost_usd": _finite(d.cost_usd),
        }

    def _observe(self, msg: dict[str, Any]) -> dict[str, Any]:
        uid = msg.get("prompt_uid")
        if uid is None:
            raise ValueError("observe needs a prompt_uid")
        cid = msg.get("config_id")
        if not isinstance(cid, str):
            raise ValueError("observe needs a config_id")
        corr = msg.get("correct")
        if (
            isinstance(corr, bool)
            or isinstance(corr, (int, float))
            and math.isfinite(corr)
            and 0 <= corr <= 1
        ):
            y = float(corr)
        else:
            raise ValueError("correct must be true/false or a number in [0, 1]")
        cost = msg.get("cost_usd")
        if cost is not None and (
            isinstance(cost, bool)
            or not isinstance(cost, (int, float))
            or not math.isfinite(cost)
            or cost < 0
        ):
            raise ValueError("cost_usd must be a number >= 0 or null")
        prompt, tag = self.seen.get(
            str(uid), (self._text(msg, "prompt"), self._text(msg, "dataset"))
        )
        self.router.observe(prompt, tag, cid, y, None if cost is None else float(cost))
        return {"ok": True}

    def serve(self, stdin: TextIO, stdout: TextIO) -> None:
        """Answer every line of ``stdin`` on ``stdout``, flushing after each answer."""
        for line in stdin:
            if not line.strip():
                ans: dict[str, Any] = {"error": "empty line"}
            else:
                ans = self.handle(line)
            stdout.write(json.dumps(ans) + "\n")
            stdout.flush()


def _cmd_serve(args: argparse.Namespace) -> int:
    router = Router.load(args.model)
    with single_threaded():
        JsonlServer(router, explore=not args.no_explore).serve(sys.stdin, sys.stdout)
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError) and exc.errors():
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "value"
        return f"invalid {exc.title}: {where}: {err.get('msg', 'invalid')}"
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (2 on any user-facing error)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        cmd = {
            "fit": _cmd_fit,
            "decide": _cmd_decide,
            "evaluate": _cmd_evaluate,
            "serve-jsonl": _cmd_serve,
        }
        return cmd[args.cmd](args)
    except (_Fail, RouterError, ValidationError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except (
        OSError,
        ValueError,
    ) as exc:  # unwritable output, corrupt files the readers did not catch
        print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
