#!/usr/bin/env python3
"""Charts of dynmoe-bench JSON lines (dynmoe-bench --json FILE appends one per row).

    python3 bench/plot.py results.jsonl [more.jsonl ...] [--out DIR] [--prefix NAME]

Writes, for every group of rows that sweeps something:
  <prefix>keep.png    time vs BEAM keep-rate f, against the ideal line time(static) * f * (1 - z)
  <prefix>zero.png    time vs zero-expert share z, against the same ideal
  <prefix>tokens.png  time vs tokens T (log-log), against the roofline bound max(FLOPs / peak
                      dense GEMM rate, active weight bytes / copy bandwidth) and the dense GEMM
                      at equal FLOPs, all measured in the same run
Rows are grouped by run (commit and start time), so two runs never mix in one line.
Needs matplotlib (pip install matplotlib).
"""
import argparse
import json
import os
import sys
from collections import defaultdict

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot.py needs matplotlib: pip install matplotlib")

LAYER_KEYS = ("commit", "date", "machine", "backend", "preset", "modified", "dtype", "experts", "zero_experts", "top_k",
              "hidden", "inter", "router", "weights", "group_size")  # weights: absent (None) in rows before 0.2


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not a JSON line: {e}")
                if r.get("ok"):
                    rows.append(r)
    return rows


def layer_label(r):
    name = r["preset"] + ("*" if r.get("modified") else "")
    w = r.get("weights", "plain")
    return f"{name} {r['backend']} {r['dtype']}" + ("" if w == "plain" else f" {w}")


def title_of(rows):
    r = rows[0]
    commits = sorted({x["commit"] for x in rows})
    dates = sorted({x["date"][:10] for x in rows})
    return f"{r['machine']} ({r['backend']}), commit {', '.join(commits)}, {', '.join(dates)}"


def groups(rows, vary):
    """Rows that differ only in `vary`, with at least 2 distinct values of it."""
    fixed = [k for k in ("tokens", "keep", "zero_share") if k != vary]
    out = defaultdict(list)
    for r in rows:
        out[tuple(r.get(k) for k in LAYER_KEYS) + tuple(r[k] for k in fixed)].append(r)
    return [sorted(g, key=lambda r: r[vary]) for g in out.values() if len({r[vary] for r in g}) >= 2]


def ms(rows, key="time_s"):
    return [1e3 * r[key] for r in rows]


def plot_fraction(rows, vary, ideal, xlabel, path):
    gs = groups(rows, vary)
    if not gs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, g in enumerate(gs):
        c = f"C{i % 10}"
        r0 = g[0]
        lab = f"{layer_label(r0)} T={r0['tokens']}"
        if vary == "keep":
            lab += f" zero={r0['zero_share']:g}"
        else:
            lab += f" keep={r0['keep']:g}"
        xs = [r[vary] for r in g]
        lo = [1e3 * r["layer"]["min_s"] for r in g]
        hi = [1e3 * r["layer"]["max_s"] for r in g]
        ax.plot(xs, ms(g), "o-", color=c, label=lab)
        ax.fill_between(xs, lo, hi, color=c, alpha=0.15, linewidth=0)
        static_ms = 1e3 * r0["static_s"]
        grid = [x / 100 for x in range(0, 101)]
        ax.plot(grid, [static_ms * ideal(x, r0) for x in grid], "--", color=c, alpha=0.7,
                label="dashed: ideal, time(static) x f x (1 - z)" if i == 0 else None)
        for r in g:
            ax.annotate(f"{r['time_over_static']:.2f}", (r[vary], 1e3 * r["time_s"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8, color=c)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(bottom=0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("time per layer, ms (median; band: min-max)")
    ax.set_title(title_of(rows), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("dynmoe: cost follows the work (numbers: time / time(static))", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_tokens(rows, path):
    gs = groups(rows, "tokens")
    if not gs:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, g in enumerate(gs):
        c = f"C{i % 10}"
        r0 = g[0]
        ts = [r["tokens"] for r in g]
        lab = f"{layer_label(r0)} keep={r0['keep']:g} zero={r0['zero_share']:g}"
        ax.loglog(ts, ms(g), "o-", color=c, label=lab)
        ax.fill_between(ts, [1e3 * r["layer"]["min_s"] for r in g], [1e3 * r["layer"]["max_s"] for r in g],
                        color=c, alpha=0.15, linewidth=0)
        ax.loglog(ts, ms(g, "bound_s"), "--", color=c, alpha=0.8,
                  label="dashed: roofline, max(FLOPs / peak dense rate, weight bytes / copy BW)" if i == 0 else None)
        ax.loglog(ts, [1e3 * r["dense"]["median_s"] for r in g], ":", color=c, alpha=0.8,
                  label="dotted: dense BLAS GEMM at equal FLOPs" if i == 0 else None)
        for r in g:
            ax.annotate(f"{100 * r['frac_of_bound']:.0f}%", (r["tokens"], 1e3 * r["time_s"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8, color=c)
    ax.set_xlabel("tokens per layer T")
    ax.set_ylabel("time per layer, ms")
    ax.set_title(title_of(rows), fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.suptitle("dynmoe: time vs T against the roofline bound (numbers: bound / time)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help="JSON-lines files written by dynmoe-bench --json")
    ap.add_argument("--out", default=None, help="output folder (default: the first file's folder)")
    ap.add_argument("--prefix", default="dynmoe_", help="file name prefix (default dynmoe_)")
    a = ap.parse_args()
    rows = load(a.files)
    if not rows:
        sys.exit("no successful rows in " + ", ".join(a.files))
    out = a.out or os.path.dirname(os.path.abspath(a.files[0]))
    os.makedirs(out, exist_ok=True)
    made = []
    for name, fn in (
        ("keep", lambda p: plot_fraction(rows, "keep", lambda f, r: f * (1 - r["zero_share"]), "BEAM keep-rate f", p)),
        ("zero", lambda p: plot_fraction(rows, "zero_share", lambda z, r: r["keep"] * (1 - z), "zero-expert share z", p)),
        ("tokens", lambda p: plot_tokens(rows, p)),
    ):
        p = os.path.join(out, f"{a.prefix}{name}.png")
        if fn(p):
            made.append(p)
    if not made:
        sys.exit("nothing to plot: no sweep (at least two values of keep, zero share or T) in the rows")
    for p in made:
        print(p)


if __name__ == "__main__":
    main()
