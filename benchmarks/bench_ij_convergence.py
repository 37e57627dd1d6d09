"""IJ path quadrature: the default (steps="auto": adaptive Gauss–Kronrod nodes per text) against uniform midpoint steps.

Part 1 (matrix error, MiniLM): for each pair and layer, the relative matrix error ‖A − A_ref‖ / ‖A_ref‖ against a
high-resolution reference of the same pair (composite Gauss–Legendre, 64 intervals × 8 nodes = 512 nodes, float64),
for uniform midpoint steps N and for the default; passes = Σ_sides nodes × active units (forward mode, so both
count the same way) plus, for the default, its probe JVPs (one per probed node). "uniform passes at equal error":
the passes uniform steps need for the default's matrix error (log-log interpolation between the counts run).

Part 2 (completeness, both real models): the error norm ‖Σ_u G[:, u] − (f(x) − f(r))‖ of one text's rule, measured
exactly with one full-tangent JVP per node (what the default's nodes are chosen by): nodes the default needs for the
per-text target that tol = 1e-3 implies (2.5e-4), against uniform steps up to 256.

    python benchmarks/bench_ij_convergence.py [--part 1|2|all] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import simattr  # noqa: E402
from simattr import engine, quadrature  # noqa: E402
from simattr.encoders import load_encoder, prepared  # noqa: E402
from simattr.methods import ij  # noqa: E402

SHORT = ("A man is playing a guitar.", "Someone plays an instrument.")
LONG = ("The committee postponed its decision on the new budget until next week, citing the need for further "
        "review of the projected costs and revenues.",
        "Officials delayed the vote on next year's spending plan by seven days because the cost and income "
        "forecasts still have to be checked again.")
UNIFORM = (8, 16, 24, 32, 48, 64, 128, 256)


def composite_gauss(intervals: int, per: int):
    x, w = np.polynomial.legendre.leggauss(per)
    edges = np.linspace(0, 1, intervals + 1)
    al = np.concatenate([lo + (hi - lo) * (x + 1) / 2 for lo, hi in zip(edges[:-1], edges[1:])])
    return al, np.concatenate([(hi - lo) / 2 * w for lo, hi in zip(edges[:-1], edges[1:])])


def side_G(side, al, w, D):
    p = engine.plan(len(side.units), len(al), side.shape, mode="forward")
    return engine.path_attribution(side.f, side.r, side.delta, al, w, side.units.matrix, D, p).double()


def prepare(enc, text, layer):
    s = ij.prepare_side(enc, text, layer, None, "token", True, False)
    s.shape = engine.Shape.of(enc, s.tokens.length, s.x.shape[-1], s.fx.shape[-1], s.x.dtype)
    return s


def part1(layers=(0, 2, 4), pairs=(SHORT,)):
    rows = []
    enc32 = load_encoder(None)
    enc64 = load_encoder(None)
    enc64.model.double()
    with prepared(enc32, enc64):
        for a, b in pairs:
            for layer in layers:
                t0 = time.perf_counter()
                s64 = [prepare(enc64, t, layer) for t in (a, b)]
                al, w = composite_gauss(64, 8)
                ref = [side_G(s, al, w, s.fx.shape[-1]) for s in s64]
                A_ref = ref[0].T @ ref[1]
                s32 = [prepare(enc32, t, layer) for t in (a, b)]
                units = [ij.active_units(s) for s in s32]
                uni = {}
                for n in UNIFORM:
                    al, w = quadrature.nodes("riemann_midpoint", n)
                    G = [side_G(s, al, w, s.fx.shape[-1]) for s in s32]
                    uni[n] = float(((G[0].T @ G[1]) - A_ref).norm() / A_ref.norm())
                job = ij.IJJob(enc32, enc32)
                job.budget = engine.default_budget(torch.device("cpu"))
                rules = [ij.adaptive_rule(s, ij.text_tolerance(job.tol, "cosine", [2.0]), job.max_steps, job.budget)
                         for s in s32]
                G = [side_G(s, r[0], r[1], s.fx.shape[-1]) for s, r in zip(s32, rules)]
                err = float(((G[0].T @ G[1]) - A_ref).norm() / A_ref.norm())
                passes = sum(r[2]["nodes"] * u for r, u in zip(rules, units))
                probes = sum(r[2]["probe_evaluations"] for r in rules)
                ns = np.array(UNIFORM, dtype=float)
                es = np.array([uni[n] for n in UNIFORM])
                if err >= es[0]:
                    need = ns[0]
                elif err <= es[-1]:
                    need = float("inf")
                else:  # first crossing, log-log
                    k = int(np.flatnonzero(es <= err)[0])
                    x0, x1, y0, y1 = np.log(ns[k - 1]), np.log(ns[k]), np.log(es[k - 1]), np.log(es[k])
                    need = float(np.exp(x0 + (np.log(err) - y0) * (x1 - x0) / (y1 - y0)))
                row = {"pair": a[:24], "layer": layer, "units": units, "uniform_error": uni,
                       "auto_nodes": [r[2]["nodes"] for r in rules], "auto_error": err, "auto_passes": passes,
                       "auto_probes": probes, "uniform_steps_at_equal_error": need,
                       "uniform_passes_at_equal_error": need * sum(units),
                       "ratio": need * sum(units) / (passes + probes), "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def part2(models=("minilm", "mpnet"), layers=None):
    from tests.real_models import mpnet_dir
    for key, name, path, default_layers in (("minilm", "all-MiniLM-L6-v2", None, (0, 2, 4)),
                                            ("mpnet", "all-mpnet-base-v2", None, (0, 4, 8))):
        if key not in models:
            continue
        enc = load_encoder(str(mpnet_dir()) if key == "mpnet" else path)
        with prepared(enc):
            for layer in layers or default_layers:
                for text in (SHORT[0], LONG[0]):
                    s = prepare(enc, text, layer)
                    d = (s.fx - s.fr).double().numpy()
                    F = lambda al: engine.full_tangent_values(s.f, s.r, s.delta, al, s.shape, 2 << 30).double().numpy()
                    uni = {}
                    for n in UNIFORM:
                        al, w = quadrature.nodes("riemann_midpoint", n)
                        uni[n] = float(np.linalg.norm((F(al) * w[:, None]).sum(0) - d))
                    _, _, info = ij.adaptive_rule(s, 2.5e-4, ij.DEFAULT_MAX_STEPS, 2 << 30)
                    row = {"model": name, "layer": layer, "tokens": s.tokens.length, "uniform": uni, "auto": info}
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["1", "2", "all"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", default="minilm,mpnet", help="part 2: minilm, mpnet or both")
    ap.add_argument("--layers", default=None, help="part 2: layers (default: 0,2,4 for MiniLM, 0,4,8 for MPNet)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.part in ("1", "all"):
        part1()
    if args.part in ("2", "all"):
        part2(args.models.split(","), [int(v) for v in args.layers.split(",")] if args.layers else None)
